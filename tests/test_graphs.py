"""CUDA-graph replay of the pipeline's transformer: signatures, refusal off CUDA, and on a GPU the same images as
eager within a stated PSNR."""

from __future__ import annotations

import pytest
import torch

from flux158.generation.graphs import call_signature, cuda_graphed
from flux158.models import RandomFluxSpec, load_pipeline


def test_call_signature_tells_shapes_dtypes_and_arguments_apart():
    a = {"x": torch.zeros(2, 3), "return_dict": False}
    assert call_signature(a) == call_signature({"return_dict": False, "x": torch.ones(2, 3)})  # values do not count
    assert call_signature(a) != call_signature({"x": torch.zeros(1, 3), "return_dict": False})
    assert call_signature(a) != call_signature({"x": torch.zeros(2, 3, dtype=torch.float16), "return_dict": False})
    assert call_signature(a) != call_signature({"x": torch.zeros(2, 3), "return_dict": True})


def test_cuda_graphs_are_refused_off_cuda(tmp_path):
    pipe = load_pipeline(RandomFluxSpec("tiny"), device="cpu", dtype=torch.float32, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="CUDA device"), cuda_graphed(pipe.transformer):
        pass
    assert "forward" not in vars(pipe.transformer)  # nothing patched


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).square().mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphed_pipeline_draws_the_eager_images(tmp_path):
    """Same prompt, seed and steps: the images from replayed graphs match eager ones to >= 40 dB PSNR, and after
    the first call (one capture per batch shape) every step replays."""
    pipe = load_pipeline(RandomFluxSpec("tiny"), device="cuda", dtype=torch.bfloat16, cache_dir=tmp_path)

    def draw():
        out = pipe("a red cube", height=64, width=64, num_inference_steps=4, num_images_per_prompt=2,
                   generator=torch.Generator().manual_seed(0), output_type="pt", max_sequence_length=32)
        return out.images

    eager = draw()
    with cuda_graphed(pipe.transformer, fall_back=False) as stats:
        first, second = draw(), draw()
    assert stats.captured == 1 and stats.replayed == 8 and stats.eager == 0
    assert _psnr(first, eager) >= 40 and torch.equal(first, second)
    assert "forward" not in vars(pipe.transformer)
