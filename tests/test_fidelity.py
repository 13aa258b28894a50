import math

import numpy as np
import pytest
from PIL import Image

from flux158.eval.fidelity import image_fidelity


def _write(root, rel, value):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(path)


def test_psnr_and_ssim_against_hand_computed_values(tmp_path):
    for rel in ("00000/samples/0000.png", "00001/samples/0000.png"):
        _write(tmp_path / "ref", rel, 100)
    _write(tmp_path / "same", "00000/samples/0000.png", 100)
    _write(tmp_path / "off", "00000/samples/0000.png", 126)
    _write(tmp_path / "off", "00001/samples/0000.png", 126)
    same = image_fidelity(tmp_path / "ref", tmp_path / "same")
    assert same == {"psnr": 100.0, "ssim": pytest.approx(1.0), "images": 1}  # only common images count
    off = image_fidelity(tmp_path / "ref", tmp_path / "off")
    assert off["psnr"] == pytest.approx(10 * math.log10(1 / (26 / 255) ** 2), rel=1e-4)
    assert off["ssim"] < 1.0 and off["images"] == 2


def test_no_common_images_is_an_error(tmp_path):
    _write(tmp_path / "ref", "00000/samples/0000.png", 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images in common"):
        image_fidelity(tmp_path / "ref", tmp_path / "empty")


def _noisy(root, rel, base, sigma, seed=0):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).normal(0, sigma, base.shape)
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def fidelity_models():
    import torch

    from flux158.eval.fidelity import ClipSimilarity, Perceptual
    from flux158.eval.geneval.build import register_tiny_clip

    torch.manual_seed(0)
    # real LPIPS linear heads over a random backbone; a shrunk random open_clip: offline stand-ins
    return Perceptual("alex", pretrained_backbone=False, device="cpu"), ClipSimilarity.from_open_clip(
        register_tiny_clip(), None, "cpu")


def test_identical_images_give_identity_values_and_noise_moves_every_metric_one_way(tmp_path, fidelity_models):
    lpips, clip = fidelity_models
    yy, xx = np.mgrid[0:64, 0:64]
    base = np.stack([xx * 4, yy * 4, (xx + yy) * 2], axis=-1).astype(np.float64)  # a smooth gradient scene
    rel = "00000/samples/0000.png"
    _noisy(tmp_path, f"ref/{rel}", base, 0)
    same = image_fidelity(tmp_path / "ref", tmp_path / "ref", lpips=lpips, clip=clip, prompts={rel: "a gradient"})
    assert same["psnr"] == 100.0 and same["ssim"] == pytest.approx(1.0) and same["lpips"] == pytest.approx(0, abs=1e-6)
    assert same["clip_image"] == pytest.approx(1.0, abs=1e-5)
    assert same["clip_text"] == pytest.approx(same["clip_text_reference"])
    results = []
    for sigma in (4, 16, 48):
        _noisy(tmp_path, f"s{sigma}/{rel}", base, sigma)
        results.append(image_fidelity(tmp_path / "ref", tmp_path / f"s{sigma}", lpips=lpips))
    assert [r["psnr"] for r in results] == sorted((r["psnr"] for r in results), reverse=True)
    assert [r["ssim"] for r in results] == sorted((r["ssim"] for r in results), reverse=True)
    assert [r["lpips"] for r in results] == sorted(r["lpips"] for r in results) and results[0]["lpips"] > 0


def test_comparison_grid_puts_each_variant_in_its_column(tmp_path):
    from flux158.eval.fidelity import comparison_grid

    columns = {}
    for name, value in [("bf16", 40), ("absmean", 200)]:
        columns[name] = []
        for i in range(2):
            path = tmp_path / name / f"{i}.png"
            _write(tmp_path / name, f"{i}.png", value + i)
            columns[name].append(path)
    out = comparison_grid(["a cat", "a dog and a very long prompt " * 3], columns, tmp_path / "grid.png", cell=32,
                          text_width=100)
    grid = np.array(Image.open(out))
    assert grid.shape == (24 + 2 * 32, 100 + 2 * 32, 3)
    assert (grid[24 + 32 + 5, 100 + 5] == 41).all() and (grid[24 + 5, 100 + 32 + 5] == 200).all()
    with pytest.raises(ValueError, match="has 1 images for 2 prompts"):
        comparison_grid(["a", "b"], {"bf16": columns["bf16"][:1]}, tmp_path / "bad.png")


def test_evaluate_reports_fidelity_to_the_bf16_images_of_the_same_seeds(compose):
    import json

    from flux158.experiments import artifact_dirs, calibrate, evaluate, generate, quantize

    common = ("experiment=geneval", "model=tiny", "logger=none", "benchmark.limit_per_group=1",
              "benchmark.samples_per_prompt=2")
    bf16, ternary = compose(*common), compose(*common, "quant=absmean")
    for stage in (calibrate, quantize, generate):
        stage.run(ternary)
    # scored before the BF16 images exist (a parallel sweep): no fidelity yet ...
    assert "fidelity_to_bf16" not in json.loads((evaluate.run(ternary) / "metrics.json").read_text())
    generate.run(bf16)
    assert "fidelity_to_bf16" not in json.loads((evaluate.run(bf16) / "metrics.json").read_text())
    # ... and a rerun adds it without rescoring
    fidelity = json.loads((evaluate.run(ternary) / "metrics.json").read_text())["fidelity_to_bf16"]
    assert fidelity["images"] == 2 and fidelity["reference_dir"] == str(artifact_dirs.stage_dir(bf16, "generate"))
    assert {"psnr", "ssim", "lpips", "clip_image", "clip_text", "clip_text_reference"} <= set(fidelity)
    assert 0 < fidelity["ssim"] < 1 and fidelity["lpips"] > 0  # random tiny models: a real, imperfect match
    assert fidelity["clip_revision"] == "random"  # pretrained: the pinned commit (test_eval_pins)
