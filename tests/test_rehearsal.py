"""The rehearsal: random-weight FLUX of real architectures, the meter, the plan's arithmetic (worked by hand), the
orchestrator's bookkeeping (fake stages: failures, resume) and the whole path at tiny shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flux158.errors import Flux158Error
from flux158.models import RandomFluxSpec, load_pipeline
from flux158.rehearsal import Measured, block_state_bytes, blockwise_plan, linear_plan, measure

TINY = ("experiment=rehearsal", "model.spec.architecture=tiny", "sampler=tiny", "model.dtype=float32",
        "logger=none")


def test_random_flux_is_the_named_architecture_and_the_same_weights_on_every_load(tmp_path):
    spec = RandomFluxSpec("tiny", seed=3)
    first = load_pipeline(spec, device="cpu", dtype=torch.float32, cache_dir=tmp_path)
    second = load_pipeline(spec, device="cpu", dtype=torch.float32, cache_dir=tmp_path)
    assert first.transformer.config.num_layers == 2 and first.transformer.config.attention_head_dim == 16
    assert first.text_encoder_2.config.d_model == 32 and first.vae.config.latent_channels == 16
    a, b = first.transformer.state_dict(), second.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # every stage of a run sees the same teacher
    other = load_pipeline(RandomFluxSpec("tiny", seed=4), device="cpu", dtype=torch.float32, cache_dir=tmp_path)
    assert not torch.equal(a["proj_out.weight"], other.transformer.state_dict()["proj_out.weight"])
    with pytest.raises(ValueError, match="unknown random FLUX architecture"):
        RandomFluxSpec("flux-pro")


def test_flux_dev_random_has_flux_dev_shapes():
    from flux158.models.hub import FLUX1_DEV_TRANSFORMER_CONFIG, meta_flux_transformer

    spec = RandomFluxSpec()
    params = sum(p.numel() for p in meta_flux_transformer(spec.configs.transformer).parameters())
    assert spec.configs.transformer == FLUX1_DEV_TRANSFORMER_CONFIG and 11.8e9 < params < 12.0e9


def test_measure_counts_the_disk_written_and_the_host_peak(tmp_path):
    (tmp_path / "old.bin").write_bytes(b"x" * 1000)  # present before: not counted
    with measure(torch.device("cpu"), [tmp_path / "out", tmp_path]) as usage:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "a.bin").write_bytes(b"x" * 1_000_000)
        big = np.ones(300_000_000 // 8)  # 300 MB, touched
        big += 1
        del big
    assert usage.disk_bytes == 1_000_000  # counted once though two watched paths reach it
    assert usage.peak_host_bytes > 300_000_000 and usage.seconds > 0
    assert usage.peak_gpu_bytes is None


def _measured(**kw) -> Measured:
    base = {"name": "x", "stage": "generate", "unit": "image", "units": 4, "work_seconds": 8.0, "seconds": 10.0,
            "peak_gpu_bytes": 5 * 2**30, "peak_host_bytes": 2 * 10**9, "disk_bytes": 4_000_000}
    return Measured(**(base | kw))


def test_linear_plan_by_hand():
    est = linear_plan(_measured(), 100)
    assert est.seconds_per_unit == 2.0  # 8 s of work / 4 images
    assert est.gpu_hours == pytest.approx((2.0 + 2.0 * 100) / 3600)  # 2 s of loading once + 100 images
    assert est.disk_gb == pytest.approx(0.1)  # 1 MB per image x 100
    assert est.fits(80e9, 128e9) is True and est.fits(5e9, 128e9) is False and est.fits(80e9, 1e9) is False


def test_blockwise_plan_by_hand_for_distill_and_gptq():
    distill = _measured(stage="quantize", unit="layer", work_seconds=14.0, seconds=20.0, peak_host_bytes=10**9, extra={
        "timings": {"blockwise_seconds": 10.0, "blockwise_rows": 8, "blocks": 2, "e2e_seconds": 4.0, "e2e_steps": 2},
        "blocks": [{"kind": "double", "steps": 2, "train_seconds": 1.0},
                   {"kind": "single", "steps": 2, "train_seconds": 3.0}]})
    est = blockwise_plan(distill, full_rows=80, rows_host_bytes=10**6, block_steps=100, e2e_steps=50)
    # steps: 0.5 s x 100 + 1.5 s x 100 = 200; row passes: (10 - 4) / 8 = 0.75 s/row x 80 = 60; stage 2: 2 s x 50
    assert est.units == 2 and est.seconds_per_unit == pytest.approx(360 / 2)
    assert est.gpu_hours == pytest.approx((20 - 14 + 360) / 3600)
    assert est.peak_host_bytes == 10**9 + 72 * 10**6  # 72 more rows held
    gptq = _measured(stage="quantize", unit="layer", work_seconds=5.0, seconds=6.0, extra={
        "timings": {"blockwise_seconds": 5.0, "blockwise_rows": 8, "blocks": 2},
        "blocks": [{"kind": "double", "solve_seconds": 0.5}, {"kind": "single", "solve_seconds": 0.5}]})
    est = blockwise_plan(gptq, full_rows=80, rows_host_bytes=0)
    assert est.seconds_per_unit == pytest.approx((1.0 + 0.5 * 80) / 2)  # solves fixed, (5 - 1) / 8 s per row


def test_block_state_bytes_of_flux_dev_at_1024():
    assert block_state_bytes(64 * 64, 512, 24 * 128) == (4096 + 512 + 1) * 3072 * 2  # 28.3 MB per row


def _fake_stages(fail: set[str]):
    """Stages that report made-up work through the tracker; the quantize one writes a block-wise metrics.json."""
    from flux158.experiments import artifact_dirs, tracking

    calls = []

    def stage(name, units_key, units):
        def run(cfg):
            calls.append((name, cfg.quant.name, cfg.benchmark.name))
            if (name, cfg.quant.name) in fail:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            out = artifact_dirs.stage_dir(cfg, name)
            out.mkdir(parents=True, exist_ok=True)
            (out / "file.bin").write_bytes(b"x" * 1000)
            if name == "quantize":
                blocks = [{"kind": "double", "steps": 2, "train_seconds": 0.2}] * 4
                (out / "metrics.json").write_text(json.dumps({"timings": {
                    "blockwise_seconds": 1.0, "blockwise_rows": 8, "blocks": 4, "e2e_seconds": 0.1, "e2e_steps": 2},
                    "blocks": blocks}))
            with tracking.track(cfg, name) as tracker:
                tracker.summary({units_key: units, "seconds": 0.5})
        return run

    stages = {"calibrate": stage("calibrate", "prompts_captured", 6), "quantize": stage("quantize",
              "layers_quantized", 40), "generate": stage("generate", "images_generated", 2),
              "evaluate": stage("evaluate", "num_images", 2)}
    return stages, calls


def test_rehearsal_records_a_failed_stage_goes_on_and_a_rerun_measures_only_what_is_missing(compose, tmp_path):
    from flux158.experiments import rehearsal

    cfg = compose(*TINY, "rehearsal.methods=[distill]", "rehearsal.generate=[distill]",
                  "rehearsal.benchmarks=[geneval]")
    stages, calls = _fake_stages(fail={("generate", "distill")})
    with pytest.raises(Flux158Error, match=r"1 stage run\(s\) failed.*generate geneval distill: OOM"):
        rehearsal.run(cfg, stages)
    (out,) = (tmp_path / "outputs" / "rehearsal").iterdir()
    assert out.name.startswith("tiny-random-cpu-")
    resources = json.loads((out / "resources.json").read_text())
    by_name = {m["name"]: m for m in resources["measured"]}
    assert list(by_name) == ["calibrate", "quantize distill", "generate geneval distill", "evaluate geneval distill"]
    assert by_name["generate geneval distill"]["error"].startswith("OOM: CUDA out of memory")
    assert by_name["calibrate"]["units"] == 6 and by_name["calibrate"]["work_seconds"] == 0.5
    assert by_name["calibrate"]["disk_bytes"] == 1000 and by_name["quantize distill"]["extra"]["timings"]["blocks"] == 4
    plan = {e["name"]: e for e in resources["paper_run"]}
    assert plan["calibrate (calib=paper)"]["units"] == 2048 + 64
    assert plan["calibrate (calib=paper)"]["disk_gb"] == pytest.approx(1000 / 6 * 2112 * (4 / 2) / 1e9)
    assert "quantize distill (8192 rows)" in plan  # 2,048 prompts x 4 states, one row per (CFG-free) call
    assert plan["evaluate geneval distill"]["units"] == 2212 and "generate geneval distill" not in plan
    assert "| generate geneval distill |" in (out / "resources.md").read_text()

    stages, calls = _fake_stages(fail=set())
    rehearsal.run(cfg, stages)
    assert [c[0] for c in calls] == ["generate"]  # only the failed run is repeated
    resources = json.loads((out / "resources.json").read_text())
    assert all(m["error"] is None for m in resources["measured"]) and len(resources["measured"]) == 4


def test_rehearsal_refuses_a_model_with_real_weights(compose):
    from flux158.experiments import rehearsal

    with pytest.raises(Flux158Error, match="model=flux_dev_random"):
        rehearsal.run(compose("experiment=rehearsal", "model=tiny", "sampler=tiny", "logger=none"), {})


def test_rehearsal_runs_every_stage_at_tiny_shapes(compose, tmp_path, mirror):  # mirror: it reads prompt files
    """The real stages, end to end, on the tiny architecture: what the GPU script runs at FLUX.1-dev's shapes."""
    from flux158.experiments import calibrate, evaluate, generate, quantize, rehearsal

    stages = {"calibrate": calibrate.run, "quantize": quantize.run, "generate": generate.run,
              "evaluate": evaluate.run}
    cfg = compose(*TINY, "rehearsal.benchmark.t2i_compbench.categories=[color,numeracy]")
    out = rehearsal.run(cfg, stages)
    resources = json.loads((out / "resources.json").read_text())
    measured = {m["name"]: m for m in resources["measured"]}
    assert all(m["error"] is None for m in measured.values()), measured
    assert measured["calibrate"]["units"] == 6  # 4 train + 2 held-out prompts
    # one prompt x 2 samples in each of two categories; the first image (its call: compile, capture) is fixed cost
    assert measured["generate t2i_compbench bf16"]["units"] == 3
    blocks = measured["quantize distill"]["extra"]["blocks"]
    assert [b["kind"] for b in blocks] == ["double", "double", "single", "single"]
    assert all(b["steps"] == 2 for b in blocks)  # the rehearsal's short schedule
    plan = {e["name"]: e for e in resources["paper_run"]}
    gen = measured["generate t2i_compbench distill"]
    assert plan["generate t2i_compbench distill"]["gpu_hours"] == pytest.approx(
        (gen["seconds"] - gen["work_seconds"] + gen["work_seconds"] / gen["units"] * 24000) / 3600)
    for stage in ("quantize", "evaluate/geneval", "evaluate/t2i_compbench"):
        for metrics in (tmp_path / "outputs" / stage).glob("tiny-random-*/metrics.json"):
            assert json.loads(metrics.read_text())["random_weights"] is True
    assert resources["random_weights"] is True and resources["gpu"] == "cpu"


def test_plan_caps_the_block_wise_rows_where_the_method_is_told_to(compose):
    from flux158.experiments import rehearsal

    cfg = compose(*TINY, "rehearsal.methods=[distill]", "rehearsal.quant.distill.config.distill.block_rows=1024")
    timings = {"blockwise_seconds": 1.0, "blockwise_rows": 8, "blocks": 4, "e2e_seconds": 0.1, "e2e_steps": 2}
    quantized = Measured("quantize distill", "quantize", "layer", 40, 1.1, 2.0, extra={
        "timings": timings, "blocks": [{"kind": "double", "steps": 2, "train_seconds": 0.2}] * 4})
    (plan,) = rehearsal.extrapolate(cfg, {"quantize distill": quantized})
    assert plan.name == "quantize distill (1024 rows)"  # 8,192 rows of calib=paper, capped


def test_the_first_generation_call_is_a_fixed_cost_when_later_calls_were_timed():
    from flux158.experiments.rehearsal import _work

    summary = {"images_generated": 4, "seconds": 10.0, "first_call_seconds": 7.0, "first_call_images": 1}
    assert _work("generate", [("generate", summary)]) == (3.0, 3.0)
    only = {"images_generated": 1, "seconds": 7.0, "first_call_seconds": 7.0, "first_call_images": 1}
    assert _work("generate", [("generate", only)]) == (1.0, 7.0)  # nothing else to time: kept whole
    assert _work("evaluate", [("generate", summary)]) == (0.0, 0.0)  # another stage's summary is not this one's
