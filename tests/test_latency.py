"""`experiment=latency` on a CPU (the tiny-model smoke test), its timing helpers, and the kernel-bench baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flux158.errors import Flux158Error
from flux158.experiments import artifact_dirs
from flux158.experiments import latency as latency_stage
from flux158.kernels.bench.methods import METHODS, Problem, build
from flux158.latency import GraphedStep, StepSettings, random_transformer, time_steps, transformer_inputs
from flux158.modulation import modulation_tables

TINY = {"patch_size": 1, "in_channels": 16, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
        "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32, "guidance_embeds": True,
        "axes_dims_rope": (4, 6, 6)}


def test_random_transformer_and_inputs_run_a_timed_loop():
    model = random_transformer(TINY, torch.device("cpu"), torch.float32)
    assert all(not p.is_meta for p in model.parameters())
    settings = StepSettings(height=64, width=32, steps=3, warmup=1, text_tokens=7)
    inputs = transformer_inputs(TINY, settings, torch.device("cpu"), torch.float32)
    assert inputs["hidden_states"].shape == (1, (64 // 16) * (32 // 16), 16)
    assert inputs["img_ids"][-1].tolist() == [0.0, 3.0, 1.0]  # last token: row 3, column 1
    timing = time_steps(model, inputs, settings)
    assert timing.error is None and timing.per_step_ms > 0
    assert abs(timing.total_ms - 3 * timing.per_step_ms) < 1e-6 and timing.peak_bytes is None  # no CUDA stats


def test_speedups_prefer_compiled_bf16_at_the_same_resolution():
    rows = [{"variant": "bf16", "compiled": False, "resolution": 512, "per_step_ms": 40.0, "peak_gib": 20.0},
            {"variant": "bf16", "compiled": True, "resolution": 512, "per_step_ms": 30.0, "peak_gib": 20.0},
            {"variant": "w158a8_int8", "compiled": True, "resolution": 512, "per_step_ms": 20.0, "peak_gib": 4.0},
            {"variant": "w2a16", "compiled": False, "resolution": 1024, "per_step_ms": 50.0, "peak_gib": None},
            {"variant": "w2a16", "compiled": False, "resolution": 512, "per_step_ms": None, "peak_gib": None,
             "error": "OOM"}]
    latency_stage._speedups(rows)
    assert rows[2]["speedup_vs_bf16_compiled"] == 1.5 and rows[2]["memory_ratio_vs_bf16"] == 5.0
    assert "speedup_vs_bf16_compiled" not in rows[3]  # no BF16 at 1024: nothing to compare with
    assert "speedup_vs_bf16_compiled" not in rows[4]  # OOM stays OOM
    graphed = [{"variant": "bf16", "compiled": True, "cuda_graph": True, "resolution": 512, "per_step_ms": 10.0,
                "peak_gib": 21.0},
               {"variant": "bf16", "compiled": True, "cuda_graph": False, "resolution": 512, "per_step_ms": 30.0,
                "peak_gib": 20.0},
               {"variant": "w2a16", "compiled": False, "cuda_graph": True, "resolution": 512, "per_step_ms": 20.0,
                "peak_gib": 4.0}]
    latency_stage._speedups(graphed)  # the baseline stays compiled BF16 without a graph, listed first or not
    assert graphed[2]["speedup_vs_bf16_compiled"] == 1.5 and graphed[0]["speedup_vs_bf16_compiled"] == 3.0


def test_cuda_graph_refusals_off_gpu_and_with_hooks():
    model = random_transformer(TINY, torch.device("cpu"), torch.float32)
    settings = StepSettings(height=32, width=32, steps=2, warmup=1, text_tokens=4)
    inputs = transformer_inputs(TINY, settings, torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="CUDA device"):
        time_steps(model, inputs, settings, cuda_graph=True)
    model.register_forward_pre_hook(lambda module, args: None)
    with pytest.raises(ValueError, match="no forward hooks"):
        GraphedStep(model, inputs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphed_step_replays_the_eager_step():
    model = random_transformer(TINY, torch.device("cuda"), torch.bfloat16)
    settings = StepSettings(height=64, width=64, steps=3, warmup=1, text_tokens=8)
    inputs = transformer_inputs(TINY, settings, torch.device("cuda"), torch.bfloat16)
    timesteps = settings.timesteps(torch.device("cuda"))
    with torch.inference_mode():
        calls = [{**inputs, "hidden_states": inputs["hidden_states"] * (i + 1), "timestep": t.expand(1)}
                 for i, t in enumerate(timesteps)]
        plain = [model(**call)[0] for call in calls]
        graphed = GraphedStep(model, calls[0])
        for call, expected in zip(calls, plain, strict=True):  # new inputs each call, as in sampling
            assert torch.equal(graphed(**call)[0], expected)
        with modulation_tables(model, timesteps, inputs["pooled_projections"], inputs["guidance"]) as tables:
            graphed = GraphedStep(model, calls[0], prepare=tables.select)  # each replay reads its step's rows
            for call, expected in zip(calls, plain, strict=True):
                torch.testing.assert_close(graphed(**call)[0], expected, rtol=2e-2, atol=2e-2)  # bf16 GEMM rounding
        timing = time_steps(model, inputs, settings, cuda_graph=True)
    assert timing.error is None and timing.per_step_ms > 0 and timing.peak_bytes >= timing.weights_bytes


def test_latency_smoke_run_on_cpu(compose, tmp_path):
    cfg = compose("experiment=latency", "model=tiny", "logger=none", "latency.steps=2", "latency.warmup=1",
                  "latency.batched_modulation=true", "latency.end_to_end=true",
                  "latency.resolutions=[32]", "latency.text_tokens=8")
    out = latency_stage.run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["smoke"] is True and metrics["settings"]["device"] == "cpu"
    rows = metrics["metrics"]["rows"]
    assert [r["variant"] for r in rows] == ["bf16", "w2a16", "w158a8_int8"]  # compiled runs are GPU-only
    assert all(r["per_step_ms"] > 0 and not r["compiled"] and not r["cuda_graph"] for r in rows)
    pipeline = metrics["metrics"]["pipeline"]  # whole tiny generations per variant, eager only (no CUDA: no peak)
    assert [(p["variant"], p["compiled"], p["cuda_graph"]) for p in pipeline] == [
        ("bf16", False, False), ("w2a16", False, False), ("w158a8_int8", False, False)]
    assert all(p["error"] is None and p["pipeline_peak_gib"] is None for p in pipeline)
    assert all(p["end_to_end_ms"] > 0 and p["first_call_s"] > 0 for p in pipeline)
    assert pipeline[0]["speedup_vs_bf16_eager"] == 1.0 and pipeline[1]["speedup_vs_bf16_eager"] == round(
        pipeline[0]["end_to_end_ms"] / pipeline[1]["end_to_end_ms"], 3)
    assert metrics["kernel_table"] is None  # `auto` reads a measured table on GPUs only


def test_whole_pipeline_memory_modes_on_cpu(compose, monkeypatch):
    loaded, load = [], latency_stage._pipeline

    def spy(cfg, device, arch, memory="resident", components="all"):
        pipe = load(cfg, device, arch, memory, components)
        loaded.append((memory, components, pipe.text_encoder_2 is not None, pipe.transformer is not None))
        return pipe

    monkeypatch.setattr(latency_stage, "_pipeline", spy)
    cfg = compose("experiment=latency", "model=tiny", "logger=none", "latency.steps=2", "latency.warmup=1",
                  "latency.resolutions=[32]", "latency.text_tokens=8", "latency.variants=[bf16,w2a16]",
                  "latency.memory_modes=[resident,encoders_offloaded,cached_embeddings]")
    pipeline = json.loads((latency_stage.run(cfg) / "metrics.json").read_text())["metrics"]["pipeline"]
    assert [(p["memory_mode"], p["variant"]) for p in pipeline] == [
        (m, v) for m in ("resident", "encoders_offloaded", "cached_embeddings") for v in ("bf16", "w2a16")]
    # cached embeddings: a text-only pipeline encodes and is gone before one without T5 and CLIP generates
    assert loaded == [("resident", "all", True, True), ("encoders_offloaded", "all", True, True),
                      ("cached_embeddings", "text", True, False), ("cached_embeddings", "image", False, True)]
    assert all(p["error"] is None and p["end_to_end_ms"] > 0 for p in pipeline)
    for p in pipeline[2:]:  # each low-memory mode against the same variant resident, and BF16 of its own mode
        resident = next(r for r in pipeline if r["memory_mode"] == "resident" and r["variant"] == p["variant"])
        assert p["time_vs_resident"] == round(p["end_to_end_ms"] / resident["end_to_end_ms"], 3)
        bf16 = next(r for r in pipeline if r["memory_mode"] == p["memory_mode"] and r["variant"] == "bf16")
        assert p["speedup_vs_bf16_eager"] == round(bf16["end_to_end_ms"] / p["end_to_end_ms"], 3)
    with pytest.raises(Exception, match="unknown mode 'everywhere'"):
        latency_stage.run(compose("experiment=latency", "model=tiny", "logger=none", "latency.steps=1",
                                  "latency.resolutions=[32]", "latency.text_tokens=8", "latency.variants=[bf16]",
                                  "latency.memory_modes=[everywhere]", "latency.compile=[false]"))


def test_prepare_runs_before_every_call_with_its_timestep():
    model = random_transformer(TINY, torch.device("cpu"), torch.float32)
    settings = StepSettings(height=32, width=32, steps=3, warmup=2, text_tokens=4)
    inputs = transformer_inputs(TINY, settings, torch.device("cpu"), torch.float32)
    seen = []
    time_steps(model, inputs, settings, prepare=lambda kwargs: seen.append(kwargs["timestep"].item()))
    expected = [1.0, 2 / 3, 1.0, 2 / 3, 1 / 3]  # the warm-up's first 2 timesteps, then all 3
    assert seen == pytest.approx(expected)


def test_bench_baselines_compute_the_reference():
    for m in (4, 40):  # the GEMV and the GEMM; _int_mm needs M > 16
        problem = Problem.random(m, 256, 48, rotate=2, device="cpu")
        for name, method in METHODS.items():
            if name == "bf16" or (name == "unpack_int8" and m <= 16):
                continue
            out = build(name, problem)()
            ref = problem.reference(method.act)
            # bf16 outputs; the fp8 cells also absorb the interpreter's fp8 rounding at binade edges
            assert ((out.float() - ref).norm() / ref.norm()) < (2e-2 if "fp8" in name else 5e-3), name


def test_host_time_counts_the_issuing_cost_per_call():
    from flux158.kernels.bench.overhead import host_us

    def slow_call():  # a call whose host cost is known: at least 2 ms of sleeping
        import time

        time.sleep(0.002)

    assert 2000 <= host_us(slow_call, calls=5) < 20000


def test_a_failing_setting_keeps_the_others_and_fails_the_run(compose, monkeypatch):
    real = latency_stage.time_steps

    def flaky(model, inputs, settings, **options):
        if any(getattr(getattr(m, "config", None), "act_bits", 16) == 8 for m in model.modules()):
            raise RuntimeError("kernel exploded")
        return real(model, inputs, settings, **options)

    monkeypatch.setattr(latency_stage, "time_steps", flaky)
    cfg = compose("experiment=latency", "model=tiny", "logger=none", "latency.steps=2", "latency.warmup=1",
                  "latency.resolutions=[32]", "latency.text_tokens=8", "latency.end_to_end=false")
    with pytest.raises(Flux158Error, match="1 setting.*w158a8_int8.*kernel exploded"):
        latency_stage.run(cfg)
    out = artifact_dirs.stage_dir(cfg, "latency")
    assert out.parent == Path(cfg.paths.output_dir) / "latency" and out.name.startswith("tiny-cpu-")
    assert not (out / ".done").exists()  # a failed setting leaves the measurement unfinished: a rerun measures again
    rows = json.loads((out / "metrics.json").read_text())["metrics"]["rows"]
    assert [(r["variant"], r["error"]) for r in rows] == [
        ("bf16", None), ("w2a16", None), ("w158a8_int8", "RuntimeError: kernel exploded")]
    assert rows[1]["per_step_ms"] > 0


def test_random_pipeline_has_the_given_architecture_and_generates(tmp_path):
    from flux158.latency import random_pipeline
    from flux158.models.hub import FLUX1_DEV_CLIP_CONFIG, FLUX1_DEV_T5_CONFIG, FLUX1_DEV_VAE_CONFIG

    t5 = {**FLUX1_DEV_T5_CONFIG, "d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 1, "num_heads": 4,
          "vocab_size": 300}
    clip = {**FLUX1_DEV_CLIP_CONFIG, "hidden_size": 24, "intermediate_size": 37, "num_hidden_layers": 1,
            "num_attention_heads": 4, "projection_dim": 24}
    vae = {**FLUX1_DEV_VAE_CONFIG, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4}
    arch = {**TINY, "in_channels": 64, "joint_attention_dim": 32, "pooled_projection_dim": 24}
    pipe = random_pipeline(arch, torch.device("cpu"), torch.float32, tmp_path, t5_config=t5, clip_config=clip,
                           vae_config=vae)
    assert torch.get_default_dtype() == torch.float32  # restored after building in the requested dtype
    assert pipe.text_encoder_2.config.d_ff == 37 and pipe.text_encoder.config.hidden_size == 24
    assert len(pipe.tokenizer) == 49_408  # CLIP's full BPE, as the real pipeline's
    assert pipe.vae.config.block_out_channels == [8, 8, 16, 16] and pipe.vae.config.scaling_factor == 0.3611
    assert all(not p.is_meta and torch.isfinite(p).all() for p in pipe.transformer.parameters())
    image = pipe("a photo of a cat", height=32, width=32, num_inference_steps=2, max_sequence_length=16,
                 output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="vocabularies"):
        random_pipeline(arch, torch.device("cpu"), torch.float32, tmp_path, t5_config={**t5, "vocab_size": 10},
                        clip_config=clip, vae_config=vae)
