"""One owner of artifact directories: every stage's directory is keyed by the config values that determine it, and
a stage finds another's output through `artifact_dirs`, never by importing it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from flux158.experiments import artifact_dirs, storage


def test_unquantized_is_what_quant_bf16_composes(compose):
    assert OmegaConf.to_container(compose("quant=bf16").quant) == artifact_dirs.UNQUANTIZED


@pytest.mark.parametrize("experiment", ["toyworld", "smoke", "geneval"])
def test_the_bf16_reference_of_a_quantized_run_is_the_bf16_run(compose, experiment):
    quantized = compose(f"experiment={experiment}", "quant=twn", "logger=none")
    bf16 = compose(f"experiment={experiment}", "quant=bf16", "logger=none")
    reference = artifact_dirs.unquantized(quantized)
    assert artifact_dirs.stage_dir(reference, "generate") == artifact_dirs.stage_dir(bf16, "generate")
    assert artifact_dirs.stage_dir(quantized, "generate") != artifact_dirs.stage_dir(bf16, "generate")


def test_every_stage_directory_is_hashed_under_its_stage(compose):
    cfg = compose("experiment=smoke", "quant=twn", "logger=none")
    root = Path(cfg.paths.output_dir)
    expected = {"calibrate": root / "calibrate" / cfg.calib.name, "quantize": root / "quantize",
                "generate": root / "generate" / "smoke", "evaluate": root / "evaluate" / "smoke",
                "storage": root / "storage", "latency": root / "latency"}
    for stage, parent in expected.items():
        path = artifact_dirs.stage_dir(cfg, stage)
        label, digest = path.name.rsplit("-", 1)
        assert path.parent == parent and len(digest) == 8 and int(digest, 16) >= 0, (stage, path)
    with pytest.raises(ValueError, match="no keyed artifact directory"):
        artifact_dirs.stage_dir(cfg, "tables")


def test_the_toy_detectors_min_area_keys_evaluations_but_not_images(compose):
    base = compose("experiment=toyworld", "logger=none")
    other = compose("experiment=toyworld", "logger=none", "benchmark.min_area=6")
    assert base.benchmark.min_area != 6
    assert artifact_dirs.stage_dir(base, "generate") == artifact_dirs.stage_dir(other, "generate")
    assert artifact_dirs.stage_dir(base, "evaluate") != artifact_dirs.stage_dir(other, "evaluate")


def test_latency_is_keyed_by_settings_gpu_and_what_ran(compose):
    cfg = compose("experiment=latency", "model=tiny", "logger=none")
    software = {"git_commit": "abc1234", "torch": "2.14.1", "triton": "3.8.0", "kernel_table_override": None}
    h200, determining = artifact_dirs.latency_artifact(cfg, "NVIDIA H200", software)
    assert h200.name.startswith("tiny-nvidia_h200-") and determining["device"] == "NVIDIA H200"
    assert artifact_dirs.latency_artifact(cfg, "NVIDIA H100 80GB HBM3", software)[0] != h200
    for key, value in [("git_commit", "def5678"), ("triton", "3.9.0"), ("kernel_table_override", "0" * 64)]:
        assert artifact_dirs.latency_artifact(cfg, "NVIDIA H200", software | {key: value})[0] != h200, key
    other = compose("experiment=latency", "model=tiny", "logger=none", "latency.steps=3")
    assert artifact_dirs.latency_artifact(other, "NVIDIA H200", software)[0] != h200
    assert artifact_dirs.latency_artifact(cfg, "NVIDIA H200", dict(software))[0] == h200


def test_kernel_table_override_is_keyed_by_content(tmp_path, monkeypatch):
    from flux158.experiments.provenance import kernel_table_override

    monkeypatch.delenv("FLUX158_KERNEL_TABLE", raising=False)
    assert kernel_table_override() is None
    table = tmp_path / "t.json"
    table.write_text('{"a": 1}')
    monkeypatch.setenv("FLUX158_KERNEL_TABLE", str(table))
    first = kernel_table_override()
    assert first == hashlib.sha256(b'{"a": 1}').hexdigest()
    table.write_text('{"a": 2}')  # same path, new measurements: a new key
    assert kernel_table_override() not in (None, first)


def test_storage_writes_a_keyed_directory_and_a_rerun_skips_it(compose, caplog):
    cfg = compose("experiment=storage", "logger=none")
    out = storage.run(cfg)
    assert out == artifact_dirs.stage_dir(cfg, "storage") and (out / "config.yaml").exists()
    written = (out / "metrics.json").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert storage.run(cfg) == out
    assert (out / "metrics.json").stat().st_mtime_ns == written and "nothing to do" in caplog.text
    per_channel = storage.run(compose("experiment=storage", "logger=none", "quant=twn"))
    assert per_channel != out and json.loads((per_channel / "metrics.json").read_text())["quant"] == "twn"
