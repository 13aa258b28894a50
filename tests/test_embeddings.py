"""Prompt embeddings as an artifact: encoded once, read by generate without T5 or CLIP, the same image bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from PIL import Image

from flux158.errors import ConfigError
from flux158.experiments import artifact_dirs, encode, generate
from flux158.generation.embeddings import EmbeddingsError, PromptEmbeddings, prompt_file
from flux158.generation.images import SamplerSettings, generate_images
from flux158.generation.layouts import make_layout
from flux158.models.loading import load_pipeline
from flux158.models.random import RandomFluxSpec
from flux158.models.tiny import TinyFluxSpec

SMOKE = ["experiment=smoke", "logger=none", "stages=[encode,generate]"]


@pytest.fixture
def loads(monkeypatch) -> list[tuple[str, object]]:
    """Every `pipeline.load` the stages make, as (components, pipeline)."""
    from flux158.experiments import pipeline

    real, seen = pipeline.load, []

    def spy(cfg, device, components="all"):
        seen.append((components, real(cfg, device, components)))
        return seen[-1][1]

    monkeypatch.setattr(pipeline, "load", spy)
    return seen


def _pngs(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_cached_embeddings_draw_the_same_bytes_without_text_encoders(compose, tmp_path, model_cache):
    cfg = compose(*SMOKE, "batch_size=2")
    items = generate.resolve.prompts(cfg)[:2]
    sampler = SamplerSettings(num_inference_steps=2, height=64, width=64, max_sequence_length=32)
    full = load_pipeline(TinyFluxSpec(), device="cpu", dtype=torch.float32, cache_dir=model_cache)
    store = PromptEmbeddings(tmp_path / "emb")
    assert store.encode(full, [i.prompt for i in items], 32, progress=False) == 2
    assert store.encode(full, [i.prompt for i in items], 32, progress=False) == 0  # resumable: nothing left
    image_only = load_pipeline(TinyFluxSpec(), device="cpu", dtype=torch.float32, cache_dir=model_cache,
                               components="image")
    assert image_only.text_encoder is None and image_only.text_encoder_2 is None
    common = dict(samples_per_prompt=3, base_seed=7, sampler=sampler, batch_size=2, progress=False)
    generate_images(full, items, make_layout("geneval", tmp_path / "a", 3), **common)
    generate_images(image_only, items, make_layout("geneval", tmp_path / "b", 3), embeddings=store, **common)
    a, b = _pngs(tmp_path / "a"), _pngs(tmp_path / "b")
    assert len(a) == 6 and a == b


def test_the_encode_stage_feeds_generate_which_never_loads_the_encoders(compose, loads):
    on_the_fly = generate.run(compose("experiment=smoke", "logger=none", "embeddings=false"))
    cfg = compose(*SMOKE, "embeddings=true", output_dir=on_the_fly.parents[3] / "cached")
    with pytest.raises(ConfigError, match="run the encode stage first"):
        generate.run(cfg)
    folder = encode.run(cfg)
    assert len(list(folder.glob("*.safetensors"))) == 6 and folder == artifact_dirs.embeddings_artifact(cfg)[0]
    loads.clear()
    out = generate.run(cfg)
    assert [components for components, _ in loads] == ["image"]
    assert _pngs(out) == _pngs(on_the_fly)


def test_a_stored_embedding_must_belong_to_its_prompt(tmp_path, model_cache):
    full = load_pipeline(TinyFluxSpec(), device="cpu", dtype=torch.float32, cache_dir=model_cache)
    store = PromptEmbeddings(tmp_path)
    store.encode(full, ["a red cube"], 32, progress=False)
    prompt_file(tmp_path, "a red cube").rename(prompt_file(tmp_path, "a blue cube"))
    with pytest.raises(EmbeddingsError, match="holds the embeddings of 'a red cube'"):
        store.load("a blue cube")
    prompt_file(tmp_path, "a blue cube").write_bytes(b"not safetensors")
    with pytest.raises(EmbeddingsError, match="cannot read"):
        store.load("a blue cube")
    with pytest.raises(EmbeddingsError, match="run the encode stage"):
        store.load("a green cube")


def test_random_pipeline_parts_equal_their_counterparts_in_the_whole(model_cache):
    spec = RandomFluxSpec("tiny")
    whole = load_pipeline(spec, device="cpu", dtype=torch.float32, cache_dir=model_cache)
    text = load_pipeline(spec, device="cpu", dtype=torch.float32, cache_dir=model_cache, components="text")
    image = load_pipeline(spec, device="cpu", dtype=torch.float32, cache_dir=model_cache, components="image")
    assert text.transformer is None and text.vae is None and image.text_encoder_2 is None
    for part, name in ((text, "text_encoder"), (text, "text_encoder_2"), (image, "vae"), (image, "transformer")):
        a, b = getattr(whole, name).state_dict(), getattr(part, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert isinstance(whole, FluxPipeline)


def test_calibrate_captures_the_teacher_from_stored_embeddings(compose, loads):
    from flux158.experiments import calibrate
    from flux158.quant.calibration import CalibrationSet

    common = ["experiment=smoke", "logger=none", "quant=distill"]
    on_the_fly = calibrate.run(compose(*common, "embeddings=false"))
    cfg = compose(*common, "stages=[encode,calibrate]", "embeddings=true", output_dir=on_the_fly.parents[3] / "cached")
    encode.run(cfg)  # the benchmark's 6 prompts and the calibration prompts
    loads.clear()
    cached = calibrate.run(cfg)
    assert [components for components, _ in loads] == ["image"]
    a, b = CalibrationSet.load(on_the_fly).records, CalibrationSet.load(cached).records
    assert len(a) == len(b) > 0
    for ra, rb in zip(a, b, strict=True):  # the same states (on a GPU, batched and single T5 calls may round apart)
        assert ra.keys() == rb.keys()
        assert all(torch.equal(ra[k], rb[k]) for k in ra)


def test_low_memory_generation_tiles_the_vae_and_keys_its_folder_apart(compose, loads):
    plain = compose("experiment=smoke", "logger=none")
    low = compose("experiment=smoke", "logger=none", "low_memory=true")
    assert artifact_dirs.generate_artifact(low)[0] != artifact_dirs.generate_artifact(plain)[0]
    out = generate.run(low)
    assert loads[0][1].vae.use_tiling and loads[0][1].vae.use_slicing
    # tiles start above 64 px, so these tiny images decode whole; one-at-a-time decoding rounds apart
    a, b = _pngs(out), _pngs(generate.run(plain))
    assert a.keys() == b.keys() and len(a) == 12
    diff = max(np.abs(np.asarray(Image.open(io.BytesIO(a[k]))).astype(int)
                      - np.asarray(Image.open(io.BytesIO(b[k]))).astype(int)).max() for k in a)
    assert diff <= 2
