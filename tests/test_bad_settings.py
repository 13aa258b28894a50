"""Issue 37 point 5: every bad setting or input is one line naming it, exit code 2, and nothing half-written.

The table runs `run.execute` (what `python run.py` runs after Hydra composed the config) in this process, so 40 cases
take seconds; three cases run the real command line to show the exit code and output as a user sees them.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
from pathlib import Path

import pytest

from conftest import REPO, run_cli

_spec = importlib.util.spec_from_file_location("flux158_run", REPO / "run.py")
run_py = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_py)

TOY = ["experiment=toyworld", "logger=none"]
SMOKE = ["experiment=smoke", "logger=none"]
T2I = ["experiment=t2i_compbench", "model=tiny", "sampler=tiny", "logger=none", "compile=false", "cuda_graph=false"]
GENEVAL = ["experiment=geneval", "model=tiny", "sampler=tiny", "logger=none", "compile=false", "cuda_graph=false"]


def _missing(tmp: Path) -> Path:
    return tmp / "does-not-exist"


def _a_file(tmp: Path) -> Path:
    (tmp / "a-file").write_text("x")
    return tmp / "a-file"


def _empty_dir(tmp: Path) -> Path:
    (tmp / "empty").mkdir(exist_ok=True)
    return tmp / "empty"


def _corrupt_checkpoint(tmp: Path) -> Path:
    (tmp / "ckpt").mkdir(exist_ok=True)
    (tmp / "ckpt" / "quantization.json").write_text("{ not json")
    return tmp / "ckpt"


# (case id, overrides (a callable gets a temp folder and returns more), what the one line must contain)
CASES: list[tuple[str, list, str]] = [
    ("height-not-multiple-of-16", [*TOY, "sampler.height=100"], "sampler.height=100 must be a positive multiple"),
    ("width-not-multiple-of-16", [*TOY, "sampler.width=1000"], "sampler.width=1000 must be a positive multiple"),
    ("height-zero", [*TOY, "sampler.height=0"], "sampler.height=0"),
    ("no-steps", [*TOY, "sampler.num_inference_steps=0"], "sampler.num_inference_steps=0 must be"),
    ("negative-guidance", [*TOY, "sampler.guidance_scale=-1"], "sampler.guidance_scale=-1 must be"),
    ("no-text-tokens", [*TOY, "sampler.max_sequence_length=0"], "sampler.max_sequence_length=0 must be"),
    ("batch-zero", [*TOY, "batch_size=0"], "batch_size=0 must be"),
    ("no-samples", [*TOY, "benchmark.samples_per_prompt=0"], "benchmark.samples_per_prompt=0 must be"),
    ("negative-limit", [*TOY, "benchmark.limit_per_group=-1"], "benchmark.limit_per_group=-1 must be"),
    ("negative-per-tag", [*TOY, "benchmark.per_tag=-3"], "benchmark.per_tag=-3 must be"),
    ("categories-on-the-toy-world", [*TOY, "benchmark.categories=[colour]"], "benchmark.categories=['colour']"),
    ("categories-on-geneval", [*GENEVAL, "benchmark.categories=[colors]"], "benchmark=geneval has none"),
    ("unknown-t2i-category", [*T2I, "benchmark.categories=[colour]"], "['colour'] not a T2I-CompBench category"),
    ("no-t2i-category", [*T2I, "benchmark.categories=[]"], "benchmark.categories=[] selects nothing"),
    ("wrong-metric-for-a-category", [*T2I, "benchmark.metrics.color=clipscore"],
     "benchmark.metrics.color='clipscore': color is scored with one of ['b-vqa']"),
    ("unknown-category-metric", [*T2I, "+benchmark.metrics.colour=b-vqa"],
     "benchmark.metrics.colour: not a T2I-CompBench category"),
    ("unknown-detector-backend", [*T2I, "benchmark.detector=magic"], "benchmark.detector='magic' is not a backend"),
    ("unknown-judge-backend", [*T2I, "benchmark.judge=gpt"], "benchmark.judge='gpt' is not a backend"),
    ("unknown-numeracy-parser", [*T2I, "benchmark.numeracy_parser=2030-01"],
     "benchmark.numeracy_parser='2030-01' is not a parser"),
    ("threshold-above-one", [*TOY, "benchmark.threshold=1.5"], "benchmark.threshold=1.5 must be"),
    ("negative-counting-threshold", [*TOY, "benchmark.counting_threshold=-0.1"], "benchmark.counting_threshold=-0.1"),
    ("min-area-zero", [*TOY, "benchmark.min_area=0"], "benchmark.min_area=0 must be"),
    ("unknown-prompt-set", [*TOY, "benchmark.prompt_set=partiprompts"], "benchmark.prompt_set='partiprompts'"),
    ("unknown-layout", [*TOY, "benchmark.layout=flat"], "benchmark.layout='flat'"),
    ("unknown-evaluator", [*TOY, "benchmark.evaluator=clip"], "benchmark.evaluator='clip'"),
    ("shard-index-out-of-range", [*TOY, "shard.index=5", "shard.count=2"], "shard.index=5"),
    ("no-shards", [*TOY, "shard.count=0"], "shard.count >= 1"),
    ("no-calibration-prompts", [*TOY, "calib.num_prompts=0"], "calib.num_prompts=0 must be"),
    ("negative-heldout", [*TOY, "calib.heldout=-1"], "calib.heldout=-1 must be"),
    ("unknown-quant-method", [*TOY, "quant=twn", "quant.config.method=magic"], "quant.config:"),
    ("unknown-granularity", [*TOY, "quant=twn", "quant.config.granularity=diagonal"], "quant.config:"),
    ("unknown-random-architecture", [*TOY, "model=flux_dev_random", "model.spec.architecture=huge"],
     "unknown random FLUX architecture 'huge'"),
    ("unknown-stage", [*TOY, "stages=[frobnicate]"], "unknown stage(s) ['frobnicate']"),
    ("evaluate-without-an-evaluator", [*SMOKE, "stages=[evaluate]"], "has no evaluator"),
    ("checkpoint-missing", [*SMOKE, "quant=twn", "stages=[generate]",
                            lambda t: [f"quant.checkpoint={_missing(t)}"]], "no such directory"),
    ("checkpoint-is-a-file", [*SMOKE, "quant=twn", "stages=[generate]",
                              lambda t: [f"quant.checkpoint={_a_file(t)}"]], "is a file, not a directory"),
    ("checkpoint-without-its-record", [*SMOKE, "quant=twn", "stages=[generate]",
                                       lambda t: [f"quant.checkpoint={_empty_dir(t)}"]],
     "is not a quantized checkpoint"),
    ("checkpoint-record-corrupt", [*SMOKE, "quant=twn", "stages=[generate]",
                                   lambda t: [f"quant.checkpoint={_corrupt_checkpoint(t)}"]],
     "its quantization.json is unreadable"),
    ("detector-checkpoint-missing", [*GENEVAL, "stages=[evaluate]",
                                     lambda t: [f"benchmark.detector_checkpoint={_missing(t)}.pth"]],
     "benchmark.detector_checkpoint="),
    ("official-checkout-missing", [*T2I, "stages=[evaluate]",
                                   lambda t: [f"benchmark.official_checkout={_missing(t)}"]],
     "benchmark.official_checkout="),
    ("official-checkout-not-git", [*T2I, "stages=[evaluate]",
                                   lambda t: [f"benchmark.official_checkout={_empty_dir(t)}"]],
     "is not a git checkout"),
    ("local-model-missing", ["experiment=geneval", "logger=none", "stages=[generate]",
                             lambda t: [f"model.pretrained={_missing(t)}"]], "is not a diffusers pipeline directory"),
    ("toy-model-missing", [*TOY, "stages=[generate]", lambda t: [f"model.pretrained={_missing(t)}"]],
     "no toy-world model at"),
]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(("overrides", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_setting_is_one_line_exit_2_and_nothing_written(compose, tmp_path, caplog, overrides, expected):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    resolved = [o for item in overrides for o in (item(inputs) if callable(item) else [item])]
    cfg = compose(*resolved)
    outputs = Path(cfg.paths.output_dir)
    with caplog.at_level(logging.INFO):
        code = run_py.execute(cfg)
    (line,) = _error_lines(caplog)
    assert code == 2 and expected in line and "\n" not in line, line
    written = [p for p in _files(outputs) if ".locks" not in p.parts]
    assert written == [], written  # refused before anything was written


def test_the_table_has_at_least_30_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def _tiny_toy(compose, *more: str):
    return compose(*TOY, "stages=[generate]", "benchmark.per_tag=1", "benchmark.samples_per_prompt=1",
                   "sampler.num_inference_steps=1", "batch_size=1", *more)


@pytest.mark.parametrize(("code", "message"), [(errno.ENOSPC, "No space left on device"),
                                               (errno.EACCES, "Permission denied")])
def test_a_full_disk_or_a_denied_write_is_one_line_and_leaves_no_temp_file(compose, caplog, monkeypatch, code,
                                                                           message):
    """The third image write fails as a full disk (or a read-only folder) would: one line naming the file, exit 2,
    no `.partial` left, the two whole images kept, and no `.done`."""
    from PIL import Image

    cfg = _tiny_toy(compose)
    real_save, calls = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:
            Path(fp).write_bytes(b"\x89PNG half")  # the write had begun when the disk filled
            raise OSError(code, message, str(fp))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    with caplog.at_level(logging.INFO):
        assert run_py.execute(cfg) == 2
    (line,) = _error_lines(caplog)
    assert line.startswith(f"{message}: ") and "run the same command again" in line and "\n" not in line
    files = _files(Path(cfg.paths.output_dir))
    assert not [p for p in files if ".partial" in p.name or p.name == ".done"], files
    pngs = [p for p in files if p.suffix == ".png"]
    assert len(pngs) == 2 and all(Image.open(p).size == (cfg.sampler.width, cfg.sampler.height) for p in pngs)


def test_a_failed_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    from flux158.artifacts import atomic_write_text

    def denied(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(PermissionError):
        atomic_write_text(tmp_path / "metrics.json", json.dumps({"a": 1}))
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_detector_checkpoint_is_named(compose, tmp_path, caplog, monkeypatch):
    """Permission denied on an input (simulated: these tests run as root, whom chmod does not stop)."""
    checkpoint = _a_file(tmp_path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == checkpoint else real_access(path, mode))
    cfg = compose(*GENEVAL, "stages=[evaluate]", f"benchmark.detector_checkpoint={checkpoint}")
    with caplog.at_level(logging.INFO):
        assert run_py.execute(cfg) == 2
    (line,) = _error_lines(caplog)
    assert f"benchmark.detector_checkpoint={checkpoint}: permission denied" in line


@pytest.mark.parametrize(("overrides", "expected"), [
    (["sampler.height=100"], "sampler.height=100 must be a positive multiple of 16"),
    (["benchmark.categories=[colour]"], "benchmark.categories=['colour'] selects T2I-CompBench categories"),
    (["experiment=rehearsal"], "experiment=rehearsal on flux-dev needs a CUDA GPU"),
])
def test_the_command_line_exits_2_with_one_line(tmp_path, model_cache, overrides, expected):
    if expected.startswith("experiment=rehearsal") and Path("/dev/nvidiactl").exists():
        pytest.skip("a GPU is visible: the rehearsal runs")
    proc = run_cli("logger=none", *overrides, env={"FLUX158_OUTPUT_DIR": str(tmp_path / "out"),
                                                   "FLUX158_CACHE_DIR": str(model_cache)})
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in text, text
    (line,) = [line for line in text.splitlines() if "[ERROR]" in line or " ERROR " in line or expected in line]
    assert expected in line
    artifacts = [p for p in _files(tmp_path / "out") if not {".locks", "hydra"} & set(p.parts)]  # hydra: run logs
    assert artifacts == []
