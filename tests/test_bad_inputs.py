"""Nothing corrupt gets through: each case as a user meets it (corrupt the file, run the command), asserting the exit
code, the message and what is on disk. Read top to bottom, this file is the list of promises.

1. A quantized checkpoint carries its own proof: flipped bytes or NaN scales stop the run with one line.
2. Images count only when they decode: a 0-byte or truncated PNG is regenerated, never counted; evaluate names a
   bad image and scores nothing.
3. A pickle is loaded only after its full sha256 matches a pin, or with --trust-checkpoint.
4. Every user error is one clean line (the traceback with HYDRA_FULL_ERROR=1 or --debug).
5. Nothing half-made: a stage that fails its preconditions leaves no folder; a resumed stage's metrics are whole.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import pytest
from diffusers import FluxPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import run_cli
from flux158.errors import Flux158Error
from flux158.eval.geneval.__main__ import main as geneval_cli
from flux158.eval.geneval.weights import PinnedFile, UntrustedCheckpointError, trusted_pickle
from flux158.experiments import artifact_dirs, evaluate, generate
from flux158.models.tiny import TinyFluxSpec, ensure_tiny_pipeline
from flux158.quant import QuantizedCheckpointError, TernaryConfig, quantize_, save_quantized

SMOKE = ["experiment=smoke", "logger=none"]


def _env(tmp_path: Path, model_cache: Path, mirror: Path) -> dict[str, str]:
    return {"FLUX158_OUTPUT_DIR": str(tmp_path / "out"), "FLUX158_CACHE_DIR": str(model_cache),
            "FLUX158_PROMPT_MIRROR": str(mirror), "WANDB_MODE": "offline"}


def _one_clean_line(proc) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "Traceback" not in text, text
    return text


# 1. Checkpoints carry their own proof ---------------------------------------------------------------------------

@pytest.fixture
def checkpoint(model_cache: Path, tmp_path: Path) -> Path:
    pipe = FluxPipeline.from_pretrained(ensure_tiny_pipeline(TinyFluxSpec(), model_cache))
    config = TernaryConfig("twn", "channel", "2bit")
    quantize_(pipe.transformer, config)
    return save_quantized(pipe.transformer, tmp_path / "ckpt", config)


def _rewrite(checkpoint: Path, edit) -> None:
    """Change the tensors and record the new file's sha256, as a writer that produced bad values would."""
    weights = checkpoint / "model.safetensors"
    tensors = load_file(weights)
    edit(tensors)
    save_file(tensors, weights)
    meta = json.loads((checkpoint / "quantization.json").read_text())
    meta["sha256"]["model.safetensors"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (checkpoint / "quantization.json").write_text(json.dumps(meta))


def test_a_checkpoint_records_the_sha256_of_its_weights(checkpoint):
    meta = json.loads((checkpoint / "quantization.json").read_text())
    assert meta["sha256"] == {"model.safetensors":
                              hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()}


def test_flipped_bytes_in_a_checkpoint_stop_generation_before_any_output(checkpoint, tmp_path, model_cache, mirror):
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    for i in range(len(data) - 2000, len(data)):  # the end of the file is tensor data, not the header
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = run_cli(*SMOKE, "quant=bf16", f"quant.checkpoint={checkpoint}", "quant.name=flipped", "stages=[generate]",
                   env=_env(tmp_path, model_cache, mirror))
    text = _one_clean_line(proc)
    assert f"{weights} has sha256" in text and "corrupt or was changed" in text
    assert not (tmp_path / "out" / "generate").exists()


def test_nan_or_inf_in_a_checkpoint_is_refused(checkpoint, compose):
    def poison(tensors):
        scale = next(k for k in sorted(tensors) if k.endswith(".scale"))
        tensors[scale][0] = float("nan")
        bias = next(k for k in sorted(tensors) if k.endswith(".bias"))
        tensors[bias][-1] = float("inf")

    _rewrite(checkpoint, poison)
    cfg = compose(*SMOKE, "quant=bf16", f"quant.checkpoint={checkpoint}", "quant.name=nan")
    with pytest.raises(QuantizedCheckpointError, match=r"NaN or inf in 2 tensor\(s\)"):
        generate.run(cfg)
    assert not artifact_dirs.generate_artifact(cfg)[0].exists()


# 2. Images count only when they decode --------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_png_in_a_finished_folder_is_regenerated_not_counted(compose, damage):
    cfg = compose(*SMOKE)
    out = generate.run(cfg)
    victim = out / "00002" / "samples" / "0001.png"
    good = victim.read_bytes()
    victim.write_bytes(b"" if damage == "empty" else good[: len(good) // 2])
    generate.run(cfg)
    assert victim.read_bytes() == good  # the same seed draws the same image
    assert json.loads((out / ".done").read_text())["images"] == 12


def test_evaluate_names_a_bad_image_and_scores_nothing(compose):
    cfg = compose("experiment=geneval", "model=tiny", "sampler=tiny", "logger=none", "calib=smoke",
                  "benchmark.limit_per_group=1", "benchmark.samples_per_prompt=1", "benchmark.detector=hf")
    images = generate.run(cfg)
    victim = next(images.rglob("0000.png"))
    victim.write_bytes(victim.read_bytes()[:200])  # e.g. a copy that ran out of disk
    # a truncated PNG lacks its end chunk: the completeness check before scoring names it (one that ends well but
    # does not decode is named by the evaluator's own check, as the CLI tests below show)
    name = re.escape(str(victim.relative_to(images)))
    with pytest.raises(Flux158Error, match=rf"not whole \(e\.g\. {name}\).*nothing was scored"):
        evaluate.run(cfg)
    out = artifact_dirs.evaluate_artifact(cfg)[0]
    assert not (out / "metrics.json").exists() and not (out / "results.jsonl").exists()


def _geneval_folder(root: Path) -> Path:
    sample = root / "00000" / "samples" / "0000.png"
    sample.parent.mkdir(parents=True)
    Image.new("RGB", (48, 48), (200, 30, 30)).save(sample)
    (root / "00000" / "metadata.jsonl").write_text(json.dumps(
        {"tag": "single_object", "prompt": "a photo of a dog", "include": [{"class": "dog", "count": 1}]}) + "\n")
    return sample


GENEVAL_ARGS = ["--detector", "hf", "--random-weights", "--device", "cpu", "--prompts", "1", "--samples", "1"]


def test_the_geneval_cli_names_a_truncated_png(tmp_path, capsys):
    sample = _geneval_folder(tmp_path / "images")
    sample.write_bytes(sample.read_bytes()[:60])
    assert geneval_cli([str(tmp_path / "images"), *GENEVAL_ARGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{sample} is not a readable image" in err
    assert not (tmp_path / "images" / "geneval").exists()
    with pytest.raises(Exception, match="not a readable image"):  # --debug: the traceback, for a bug report
        geneval_cli([str(tmp_path / "images"), *GENEVAL_ARGS, "--debug"])


def test_the_geneval_cli_names_a_malformed_metadata_file(tmp_path, capsys):
    _geneval_folder(tmp_path / "images")
    meta = tmp_path / "images" / "00000" / "metadata.jsonl"
    meta.write_text('{"tag": "single_object", "prompt": ')
    assert geneval_cli([str(tmp_path / "images"), *GENEVAL_ARGS]) == 2
    assert f"{meta} is not JSON lines" in capsys.readouterr().err
    meta.write_text('["a list, not a row"]\n')
    assert geneval_cli([str(tmp_path / "images"), *GENEVAL_ARGS]) == 2
    assert "must be a JSON object with 'prompt' and 'tag'" in capsys.readouterr().err


# 3. Pickles only after a full hash ------------------------------------------------------------------------------

class _Tripwire:
    """A pickle that creates a file when it is unpickled: proof that it never was."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_pickle_pinned_only_by_its_8_digit_prefix_is_refused_with_its_full_hash(tmp_path, monkeypatch):
    from flux158.eval.geneval import weights

    source = tmp_path / "detector.pth"
    source.write_bytes(pickle.dumps(_Tripwire(tmp_path / "ran")))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    prefix_only = PinnedFile(source.as_uri(), digest[:8])
    monkeypatch.setattr(weights, "PINNED", (prefix_only,))
    with pytest.raises(UntrustedCheckpointError, match=f"sha256 {digest}, which matches the published 8-digit"):
        trusted_pickle(prefix_only, tmp_path / "cache")
    assert trusted_pickle(prefix_only, tmp_path / "cache", trust=True) == (tmp_path / "cache" / "detector.pth", digest)
    full = PinnedFile(source.as_uri(), digest)
    monkeypatch.setattr(weights, "PINNED", (full,))
    assert trusted_pickle(full, tmp_path / "cache2")[1] == digest
    assert trusted_pickle(source)[1] == digest  # a user's copy of a fully pinned file needs no flag
    assert not (tmp_path / "ran").exists()


def test_a_users_checkpoint_that_matches_no_pin_is_never_unpickled(tmp_path, capsys):
    pytest.importorskip("mmdet")
    _geneval_folder(tmp_path / "images")
    junk = tmp_path / "mine.pth"
    junk.write_bytes(pickle.dumps(_Tripwire(tmp_path / "ran")))
    args = [str(tmp_path / "images"), "--detector", "mmdet", "--checkpoint", str(junk), "--device", "cpu",
            "--prompts", "1", "--samples", "1"]
    assert geneval_cli(args) == 2
    err = capsys.readouterr().err
    assert f"{junk} is a pickle" in err and "matches no pinned file" in err and "--trust-checkpoint" in err
    assert not (tmp_path / "ran").exists()


def test_the_readme_documents_trust_checkpoint():
    from conftest import REPO

    assert "--trust-checkpoint" in (REPO / "README.md").read_text()


# 4. Every user error is one clean line (the table of bad settings is tests/test_bad_settings.py) ----------------

@pytest.mark.parametrize("setting", ["benchmark.samples_per_prompt=0", "benchmark.limit_per_group=-1", "batch_size=0"])
def test_counts_below_one_are_refused_before_any_output(compose, setting):
    cfg = compose(*SMOKE, setting)
    with pytest.raises(Flux158Error, match=rf"{setting.split('=')[0]}=-?\d+ must be a whole number >= 1"):
        generate.run(cfg)
    assert not artifact_dirs.generate_artifact(cfg)[0].exists()


def test_hydra_full_error_shows_the_traceback(tmp_path, model_cache, mirror):
    env = {**_env(tmp_path, model_cache, mirror), "HYDRA_FULL_ERROR": "1"}
    proc = run_cli(*SMOKE, "stages=[generate]", "shard.count=0", env=env)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


# 5. Nothing half-made -------------------------------------------------------------------------------------------

def test_a_streamed_quantize_without_weights_leaves_no_folder(tmp_path, model_cache, mirror):
    proc = run_cli(*SMOKE, "model=flux_dev", f"model.pretrained={tmp_path / 'no-such-copy'}", "quant=absmean",
                   "stages=[quantize]", env=_env(tmp_path, model_cache, mirror))
    assert "no-such-copy" in _one_clean_line(proc)
    assert not (tmp_path / "out" / "quantize").exists()


def test_a_resumed_distill_records_every_block_and_the_work_of_every_run(compose, monkeypatch):
    from flux158.experiments import calibrate, quantize
    from flux158.quant import api

    cfg = compose(*SMOKE, "quant=distill", "quant.config.distill.block_steps=3", "quant.config.distill.e2e_steps=3")
    calibrate.run(cfg)
    real = api.distill_block

    def dies_at_block_2(*args, **kwargs):
        inner = real(*args, **kwargs)

        def quantize_block(index, block, data):
            if index == 2:
                raise KeyboardInterrupt  # a kill after blocks 0 and 1 were saved
            return inner(index, block, data)

        return quantize_block

    monkeypatch.setattr(api, "distill_block", dies_at_block_2)
    with pytest.raises(KeyboardInterrupt):
        quantize.run(cfg)
    out = artifact_dirs.quantize_artifact(cfg)[0]
    assert sorted(p.name for p in (out / "blocks").iterdir()) == ["block-000.safetensors", "block-001.safetensors"]
    monkeypatch.setattr(api, "distill_block", real)
    quantize.run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    blocks = metrics["blocks"]
    assert [b["block"] for b in blocks] == [0, 1, 2, 3]  # the first two reloaded with their records
    assert all(b["seconds"] > 0 and b["loss_final"] < b["loss_init"] for b in blocks)
    timings = metrics["timings"]
    assert timings["blockwise_seconds"] == pytest.approx(sum(b["seconds"] for b in blocks))
    assert metrics["metrics"]["seconds"] == pytest.approx(timings["blockwise_seconds"] + timings["e2e_seconds"])
    assert metrics["metrics"]["seconds_this_run"] > 0


def test_an_interrupted_write_never_takes_the_final_name(tmp_path):
    from flux158.artifacts import atomic_write

    def bad_png(tmp: Path) -> None:
        tmp.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)

    def verify(tmp: Path) -> None:
        with Image.open(tmp) as im:
            im.verify()

    with pytest.raises(Exception):  # noqa: B017 - PIL's error type varies with the damage
        atomic_write(tmp_path / "a.png", bad_png, check=verify)
    assert not list(tmp_path.iterdir())
