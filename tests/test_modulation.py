"""Batched modulation equals the per-step modulation, refuses what it did not precompute, and restores the model."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel
from torch import nn

from flux158.modulation import batched_modulation
from flux158.quant import TernaryConfig, quantize_


def _model() -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6)).eval()


def _inputs(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"hidden_states": torch.randn(batch, 16, 16, generator=g),
            "encoder_hidden_states": torch.randn(batch, 5, 32, generator=g),
            "pooled_projections": torch.randn(batch, 32, generator=g), "guidance": torch.full((batch,), 3.5),
            "img_ids": torch.zeros(16, 3), "txt_ids": torch.zeros(5, 3), "return_dict": False}


@pytest.mark.parametrize("ternary", [False, True])
def test_same_outputs_as_per_step_modulation(ternary):
    model, inputs = _model(), _inputs()
    if ternary:
        quantize_(model, TernaryConfig("l2_optimal", "channel"))
    timesteps = torch.tensor([1.0, 0.75, 0.3])
    with torch.no_grad():
        plain = [model(**inputs, timestep=t.expand(2))[0] for t in timesteps]
        linears = [m for m in model.modules() if isinstance(m, (nn.Linear,)) or type(m).__name__ == "TernaryLinear"]
        with batched_modulation(model, timesteps, inputs["pooled_projections"], inputs["guidance"]) as replaced:
            assert replaced == 2 * 2 + 2 + 1  # norm1 and norm1_context per double block, norm per single, norm_out
            batched = [model(**inputs, timestep=t.expand(2))[0] for t in timesteps.flip(0)][::-1]  # any order
    for a, b in zip(plain, batched, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    after = [m for m in model.modules() if isinstance(m, (nn.Linear,)) or type(m).__name__ == "TernaryLinear"]
    assert after == linears  # the original modulation linears are back


def test_tables_without_the_hook_serve_the_selected_step():
    from flux158.modulation import modulation_tables

    model, inputs = _model(), _inputs()
    timesteps = torch.tensor([1.0, 0.4])
    with torch.no_grad():
        plain = [model(**inputs, timestep=t.expand(2))[0] for t in timesteps]
        with modulation_tables(model, timesteps, inputs["pooled_projections"], inputs["guidance"]) as tables:
            assert not model._forward_pre_hooks  # the caller selects
            for t, expected in zip(timesteps, plain, strict=True):
                call = {**inputs, "timestep": t.expand(2)}
                tables.select(call)
                torch.testing.assert_close(model(**call)[0], expected, rtol=1e-5, atol=1e-5)
            stale = model(**inputs, timestep=timesteps[0].expand(2))[0]  # no select: still the last step's rows
            assert not torch.allclose(stale, plain[0], rtol=1e-5, atol=1e-5)


def test_unknown_timestep_or_prompt_is_an_error():
    model, inputs = _model(), _inputs()
    with torch.no_grad(), batched_modulation(model, torch.tensor([1.0, 0.5]), inputs["pooled_projections"],
                                             inputs["guidance"]):
        with pytest.raises(ValueError, match="not precomputed"):
            model(**inputs, timestep=torch.tensor([0.7, 0.7]))
        with pytest.raises(ValueError, match="not precomputed"):
            model(**{**inputs, "pooled_projections": inputs["pooled_projections"] + 1}, timestep=torch.ones(2))


def test_generation_speedups_match_the_plain_images_and_are_keyed_apart(compose):
    import numpy as np
    from PIL import Image

    from flux158.experiments import generate

    common = ("experiment=smoke", "model=tiny", "logger=none", "quant=bf16")
    plain_dir = generate.run(compose(*common))
    batched_dir = generate.run(compose(*common, "batched_modulation=true"))
    assert plain_dir != batched_dir  # rounding may differ, so the folders are keyed apart
    plain = sorted(plain_dir.glob("*/samples/*.png"))
    assert len(plain) == 12 and [p.relative_to(plain_dir) for p in plain] == [
        p.relative_to(batched_dir) for p in sorted(batched_dir.glob("*/samples/*.png"))]
    for path in plain:
        a = np.asarray(Image.open(path), dtype=np.int16)
        b = np.asarray(Image.open(batched_dir / path.relative_to(plain_dir)), dtype=np.int16)
        assert np.abs(a - b).max() <= 2  # the same sampling up to float rounding of the modulation GEMMs
    # the transformer is back to its own modulation linears afterwards
    assert generate.run(compose(*common)) == plain_dir
    # compile=true is keyed apart too; on a CPU it stays eager, so its images are the plain ones exactly
    compiled_dir = generate.run(compose(*common, "compile=true"))
    assert compiled_dir not in (plain_dir, batched_dir)
    for path in plain:
        assert (compiled_dir / path.relative_to(plain_dir)).read_bytes() == path.read_bytes()


def test_pipeline_modulation_rebuilds_per_prompt_and_restores_the_linears():
    from flux158.modulation import batched_modulation_in_pipeline

    model, inputs = _model(), _inputs()
    scheduler = type("Scheduler", (), {"timesteps": torch.tensor([1000.0, 500.0])})()
    pipe = type("Pipe", (), {"transformer": model, "scheduler": scheduler})()
    originals = [m.linear for m in model.modules() if hasattr(m, "linear")]
    with torch.no_grad():
        plain = [model(**inputs, timestep=torch.full((2,), t))[0] for t in (1.0, 0.5)]
        other = {**inputs, "pooled_projections": inputs["pooled_projections"] + 1}
        plain_other = model(**other, timestep=torch.full((2,), 0.5))[0]
        with batched_modulation_in_pipeline(pipe):
            batched = [model(**inputs, timestep=torch.full((2,), t))[0] for t in (1.0, 0.5)]
            batched_other = model(**other, timestep=torch.full((2,), 0.5))[0]  # a new prompt: new tables
            with pytest.raises(ValueError, match="not precomputed"):
                model(**other, timestep=torch.full((2,), 0.7))  # not one of the scheduler's timesteps
    for a, b in zip([*plain, plain_other], [*batched, batched_other], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert [m.linear for m in model.modules() if hasattr(m, "linear")] == originals
