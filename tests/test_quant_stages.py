"""The calibrate and quantize stages through `python run.py`: artifacts, metrics, checkpoint pickup, clear errors."""

import json

from conftest import run_cli
from wandb_records import record_values, settled_records


def _env(tmp_path, model_cache):
    return {"FLUX158_OUTPUT_DIR": str(tmp_path), "FLUX158_CACHE_DIR": str(model_cache), "WANDB_MODE": "offline"}


def test_smoke_sweep_over_methods_quantizes_once_each_and_generates_from_the_checkpoints(tmp_path, model_cache):
    proc = run_cli("-m", "experiment=smoke", "quant=bf16,absmean,gptq", env=_env(tmp_path, model_cache), timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text

    (calib,) = (tmp_path / "calibrate" / "smoke").iterdir()  # one teacher cache shared by both methods
    assert text.count("teacher on") == 1  # captured for the first method; the second finds it complete
    assert len(list(calib.glob("train-*.safetensors"))) == 2 and (calib / ".done").exists()
    metrics = {}
    for method in ("absmean", "gptq"):
        (qdir,) = (tmp_path / "quantize").glob(f"tiny-{method}-*")
        metrics[method] = json.loads((qdir / "metrics.json").read_text())
        assert (qdir / "transformer" / "quantization.json").exists() and not (qdir / "blocks").exists()
        m = metrics[method]["metrics"]
        assert m["layers_quantized"] == len(metrics[method]["layers"]) == 40
        assert 0 < m["zero_fraction"] < 1 and m["ratio_2bit"] > 1 and m["seconds"] > 0
        assert set(metrics[method]["layers"]["transformer_blocks.0.attn.to_q"]) == {"params", "sqnr_db",
                                                                                     "zero_fraction"}
    # GPTQ minimises the output error, not the weight error: lower held-out output error than absmean
    assert metrics["gptq"]["metrics"]["output_rel_mse"] < metrics["absmean"]["metrics"]["output_rel_mse"]
    assert text.count("using the quantized checkpoint") == 2
    for quant in ("bf16", "absmean", "gptq"):
        (gen,) = (tmp_path / "generate" / "smoke").glob(f"tiny-{quant}-*")
        assert len(list(gen.glob("*/samples/*.png"))) == 12

    runs = {}
    for run_dir in (tmp_path / "wandb").glob("offline-run-*"):
        records = settled_records(next(run_dir.glob("run-*.wandb")), {"run", "summary"})
        run = [r.run for r in records if r.WhichOneof("record_type") == "run"][-1]
        runs[run.display_name] = record_values(records, "summary")
    assert runs["quantize-tiny-gptq"]["output_rel_mse"] == metrics["gptq"]["metrics"]["output_rel_mse"]


def test_calibrated_method_without_calibration_stops_with_instructions(tmp_path, model_cache):
    proc = run_cli("experiment=smoke", "quant=distill", "stages=[quantize]", "logger=none",
                   env=_env(tmp_path, model_cache))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in text
    assert "calibrate" in text and not (tmp_path / "quantize").exists()
    gen = run_cli("experiment=smoke", "quant=distill", "stages=[generate]", "logger=none",
                  env=_env(tmp_path, model_cache))
    assert gen.returncode == 2 and "run the stages calibrate and quantize first" in gen.stdout + gen.stderr


def test_distill_stage_runs_and_a_rerun_reuses_its_checkpoint(tmp_path, model_cache):
    steps = ["quant.config.distill.block_steps=30", "quant.config.distill.e2e_steps=30"]
    args = ["experiment=smoke", "quant=distill", "stages=[calibrate,quantize]", "logger=none", *steps]
    proc = run_cli(*args, env=_env(tmp_path, model_cache))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (qdir,) = (tmp_path / "quantize").glob("tiny-distill-*")
    metrics = json.loads((qdir / "metrics.json").read_text())
    blocks = metrics["blocks"]
    assert len(blocks) == 4 and all(b["loss_final"] < b["loss_init"] for b in blocks)
    again = run_cli(*args, env=_env(tmp_path, model_cache))
    assert again.returncode == 0 and "checkpoint exists" in again.stdout + again.stderr


def test_hub_models_are_quantized_by_streaming_their_shards(tmp_path, model_cache):
    from flux158.models.tiny import TinyFluxSpec, ensure_tiny_pipeline

    local = ensure_tiny_pipeline(TinyFluxSpec(), model_cache)  # a diffusers pipeline folder, as a FLUX.1-dev copy
    proc = run_cli("experiment=smoke", "model=flux_dev", f"model.pretrained={local}", "quant=twn",
                   "stages=[quantize]", "logger=none", env=_env(tmp_path, model_cache))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (qdir,) = (tmp_path / "quantize").glob("flux-dev-twn-*")
    meta = json.loads((qdir / "transformer" / "quantization.json").read_text())
    assert meta["base_model"] == str(local) and len(meta["layers"]) == 40
    assert list((qdir / "transformer").glob("model-00001-of-*.safetensors"))


def test_distill_runs_data_parallel_under_torchrun(tmp_path, model_cache):
    """2 CPU ranks (gloo): each draws its own rows, gradients are averaged, rank 0 writes the one checkpoint."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    args = ["experiment=smoke", "quant=distill", "stages=[calibrate,quantize]", "logger=none",
            "quant.config.distill.block_steps=20", "quant.config.distill.e2e_steps=20"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           str(REPO / "run.py"), *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **_env(tmp_path, model_cache)})
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "distill data-parallel over 2 processes" in text and "2 ranks hold identical weights" in text
    (qdir,) = (tmp_path / "quantize").glob("tiny-distill-*")
    metrics = json.loads((qdir / "metrics.json").read_text())
    assert all(b["loss_final"] < b["loss_init"] for b in metrics["blocks"])
    assert (qdir / ".done").exists() and not (qdir / "blocks").exists()


def test_blockwise_method_that_cannot_hold_its_rows_in_host_memory_refuses_before_writing(compose, monkeypatch):
    import psutil
    import pytest

    from flux158.errors import Flux158Error
    from flux158.experiments import artifact_dirs, calibrate, quantize

    cfg = compose("experiment=smoke", "quant=distill", "logger=none")
    calibrate.run(cfg)
    memory = psutil.virtual_memory()._replace(available=100_000)
    monkeypatch.setattr(quantize.psutil, "virtual_memory", lambda: memory)
    # 16 rows (8 prompts x 2 states); per row 3 states x (16 image + 32 text + 1) tokens x 32 wide x 4 bytes
    per_row = 3 * (16 + 32 + 1) * 32 * 4
    with pytest.raises(Flux158Error, match=rf"16 calibration rows x {per_row / 1e6:.1f} MB.*At most "
                                           rf"{int(0.8 * 100_000 // per_row)} rows fit.*Nothing was written"):
        quantize.run(cfg)
    assert not artifact_dirs.quantize_artifact(cfg)[0].exists()


def test_calibration_that_cannot_fit_the_disk_refuses_before_writing(compose, monkeypatch):
    import shutil

    import pytest

    from flux158.errors import Flux158Error
    from flux158.experiments import artifact_dirs, calibrate

    cfg = compose("experiment=smoke", "quant=distill", "logger=none")
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(calibrate.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(Flux158Error, match=r"12 prompts x 2 states .* but 0.0 GB are free.*Nothing was written"):
        calibrate.run(cfg)
    assert not artifact_dirs.calibration_artifact(cfg)[0].exists()

