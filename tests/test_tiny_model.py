import hashlib
import io

import torch
from diffusers import FluxPipeline

from flux158.models.tiny import TinyFluxSpec, ensure_tiny_pipeline
from flux158.models.tokenizers import build_clip_tokenizer


def _png_digests(pipe, seed: int) -> list[str]:
    gens = [torch.Generator().manual_seed(seed + i) for i in range(2)]
    images = pipe("a photo of a cat", num_images_per_prompt=2, generator=gens, height=64, width=64,
                  num_inference_steps=2, max_sequence_length=32).images
    out = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(hashlib.sha256(buf.getvalue()).hexdigest())
    return out


def test_clip_tokenizer_matches_openai_ids(tmp_path):
    tok = build_clip_tokenizer(tmp_path, n_merges=48894)  # the full OpenAI vocabulary
    assert len(tok) == 49408
    # ids of the real openai/clip-vit-large-patch14 tokenizer for this text
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_tiny_pipeline_builds_offline_and_is_deterministic(model_cache):
    path = ensure_tiny_pipeline(TinyFluxSpec(), model_cache)
    assert (path / "model_index.json").exists()
    assert sorted(p.name for p in path.iterdir() if p.is_dir()) == [
        "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae"]
    assert not list(path.rglob("*.bin")), "weights must be safetensors"
    pipe = FluxPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    first = _png_digests(pipe, seed=7)
    assert _png_digests(pipe, seed=7) == first
    assert _png_digests(pipe, seed=8) != first
    assert first[0] != first[1]  # each image of a batch has its own noise
    # a second process would rebuild from the same seed: the rebuilt weights are identical
    rebuilt = ensure_tiny_pipeline(TinyFluxSpec(), model_cache.parent / "rebuild")
    a = (path / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    b = (rebuilt / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == b
