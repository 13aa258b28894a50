"""The committed toy-world model: loads, samples deterministically, scores well above chance, and collapses under
naive absmean ternarization (the failure the paper's method must avoid)."""

import hashlib
import io
import json

import numpy as np
import pytest
import torch
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

from flux158.data.prompts import geneval_prompts_from_records
from flux158.eval.toyworld.detector import ToyDetector
from flux158.eval.toyworld.scoring import score_folder
from flux158.experiments import artifact_dirs, evaluate, generate
from flux158.generation.images import SamplerSettings, generate_images
from flux158.generation.layouts import GenEvalLayout
from flux158.models import ToyWorldSource, load_pipeline
from flux158.toyworld.scenes import PALETTE, heldout_prompts

SAMPLER = SamplerSettings(num_inference_steps=20, guidance_scale=3.0, height=32, width=32, max_sequence_length=16)
# measured 0.525 on the committed 4.1M model of 2026-12-07 (0.420 on the 1.8M one before it; 2 samples per
# held-out prompt, 20 steps, guidance 3, counting IoU 0.7; detector of 2026-12-06)
FP_FLOOR = 0.40
CHANCE = 0.05   # naive absmean measured 0.0


@pytest.fixture(scope="module")
def toy_pipe(tmp_path_factory):
    return load_pipeline(ToyWorldSource(), device="cpu", dtype=torch.float32, cache_dir=tmp_path_factory.mktemp("c"))


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_committed_model_is_small_safetensors():
    root = ToyWorldSource().resolve()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 10_000_000  # issue 17: a committed model stays under 10 MB
    assert max(p.stat().st_size for p in files) < 5_000_000  # sharded: no committed file over 5 MB
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    assert (root / "training_config.yaml").exists()


def test_fixed_prompt_and_seed_give_the_same_bytes(toy_pipe, tmp_path):
    again = load_pipeline(ToyWorldSource(), device="cpu", dtype=torch.float32, cache_dir=tmp_path)

    def sample(pipe):
        return _png(pipe("a photo of a red circle", generator=torch.Generator().manual_seed(3),
                         num_inference_steps=20, guidance_scale=3.0).images[0])

    first = sample(toy_pipe)
    assert sample(again) == first and sample(toy_pipe) == first
    assert hashlib.sha256(first).hexdigest() != hashlib.sha256(_png(toy_pipe(
        "a photo of a red circle", generator=torch.Generator().manual_seed(4), num_inference_steps=20,
        guidance_scale=3.0).images[0])).hexdigest()


def _score(pipe, root) -> dict[str, float]:
    from flux158.eval.geneval.rules import summarize

    items = geneval_prompts_from_records(heldout_prompts())
    generate_images(pipe, items, GenEvalLayout(root), samples_per_prompt=2, base_seed=42, sampler=SAMPLER,
                    batch_size=2, progress=False)
    return summarize(score_folder(ToyDetector(PALETTE), root, threshold=0.3, counting_threshold=0.7))


def _absmean_ternary_(transformer) -> int:
    """BitNet b1.58 per-tensor absmean round-to-nearest on every block linear, in place (a test-local oracle)."""
    n = 0
    for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
        assert isinstance(block, FluxTransformerBlock | FluxSingleTransformerBlock)
        for module in block.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight.data
                scale = w.abs().mean()
                module.weight.data = (w / (scale + 1e-8)).round().clamp(-1, 1) * scale
                n += 1
    return n


def test_fp_scores_well_above_chance_and_absmean_collapses(toy_pipe, tmp_path):
    fp = _score(toy_pipe, tmp_path / "fp")
    assert fp["overall"] >= FP_FLOOR, fp
    ternary = load_pipeline(ToyWorldSource(), device="cpu", dtype=torch.float32, cache_dir=tmp_path)
    assert _absmean_ternary_(ternary.transformer) > 0
    tq = _score(ternary, tmp_path / "absmean")
    assert tq["overall"] <= CHANCE + 0.1 and tq["overall"] < fp["overall"] / 4, (fp, tq)


def test_toyworld_experiment_writes_metrics(compose, tmp_path):
    small = ("logger=none", "benchmark.samples_per_prompt=1", "benchmark.per_tag=8")
    cfg = compose(*small)
    generate.run(cfg)
    out = evaluate.run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "toyworld" and metrics["quant"] == "bf16" and metrics["benchmark"] == "toyworld"
    tags = {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert metrics["num_images"] == 8 * len(tags)  # balanced: every tag has per_tag entries
    assert set(metrics["metrics"]) == {*tags, "overall"}
    assert metrics["gpu"] == "cpu" and metrics["git_commit"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["num_images"]
    by_tag = {}
    for r in rows:
        by_tag.setdefault(r["tag"], []).append(r["correct"])
    assert {t: len(v) for t, v in by_tag.items()} == dict.fromkeys(tags, 8)
    assert metrics["metrics"]["overall"] == pytest.approx(np.mean([np.mean(v) for v in by_tag.values()]))
    intervals = metrics["intervals"]
    assert intervals["level"] == 0.95 and set(intervals) >= {*tags, "overall"}
    for key in (*tags, "overall"):
        low, high = intervals[key]
        assert low <= metrics["metrics"][key] <= high
    assert "fidelity_to_bf16" not in metrics and "retention_vs_bf16" not in metrics
    quantized = compose(*small, "quant=absmean")
    generate.run(quantized)
    qmetrics = json.loads((evaluate.run(quantized) / "metrics.json").read_text())
    fidelity = qmetrics["fidelity_to_bf16"]
    assert fidelity["images"] == metrics["num_images"] and fidelity["psnr"] < 20 and fidelity["ssim"] < 0.5
    retention = qmetrics["retention_vs_bf16"]["overall"]
    assert retention["difference"]["estimate"] == pytest.approx(
        qmetrics["metrics"]["overall"] - metrics["metrics"]["overall"])
    assert retention["retention"]["estimate"] == pytest.approx(
        qmetrics["metrics"]["overall"] / metrics["metrics"]["overall"])


def test_retrained_weights_get_new_artifact_dirs(compose, tmp_path):
    import shutil

    copy = tmp_path / "weights"
    shutil.copytree(ToyWorldSource().resolve(), copy)
    same = artifact_dirs.stage_dir(compose("logger=none", f"model.pretrained={copy}"), "generate")
    st = next((copy / "transformer").glob("*.safetensors"))
    data = bytearray(st.read_bytes())
    data[-1] ^= 1
    st.write_bytes(bytes(data))
    assert artifact_dirs.stage_dir(compose("logger=none", f"model.pretrained={copy}"), "generate") != same
