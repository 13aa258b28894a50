"""Fidelity of images to references made with the same seeds (a quantized model vs its BF16 original): PSNR and
SSIM (torchmetrics), LPIPS (the `lpips` package), CLIP image-image and image-text cosine (open_clip), and
side-by-side comparison grids."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from flux158.eval.errors import WeightsUnavailableError
from flux158.eval.open_clip_weights import create_pinned


def _load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float()[None] / 255


class Perceptual:
    """LPIPS distance (0 = identical) with the reference implementation's linear heads; `pretrained_backbone=False`
    keeps a random backbone (plumbing runs without the torchvision download)."""

    def __init__(self, net: str = "alex", pretrained_backbone: bool = True, device: str | None = None) -> None:
        import os

        import lpips

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        cached = Path(torch.hub.get_dir()) / "checkpoints"
        if pretrained_backbone and offline and not any(cached.glob(f"{net}*.pth")):
            raise WeightsUnavailableError(f"the LPIPS {net} backbone is not in {cached} and HF_HUB_OFFLINE is set; "
                                          "download it once with internet")
        try:
            self.model = lpips.LPIPS(net=net, pnet_rand=not pretrained_backbone, verbose=False).to(self.device).eval()
        except (OSError, RuntimeError) as e:  # torchvision could not download or verify the backbone
            raise WeightsUnavailableError(f"cannot load the LPIPS {net} backbone ({e}); download it once with "
                                          "internet (torchvision caches it under $TORCH_HOME)") from None

    @torch.no_grad()
    def __call__(self, reference: torch.Tensor, candidate: torch.Tensor) -> float:
        """Images (1, 3, H, W) in [0, 1]."""
        return float(self.model(reference.to(self.device) * 2 - 1, candidate.to(self.device) * 2 - 1).item())


class ClipSimilarity:
    """Cosine similarities in an open_clip embedding space: image-image and image-text."""

    def __init__(self, model, preprocess, tokenizer, device: str | None = None, revision: str = "as given") -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.preprocess, self.tokenizer = model.to(self.device).eval(), preprocess, tokenizer
        self.revision = revision

    @classmethod
    def from_open_clip(cls, model_name: str = "ViT-L-14", pretrained: str | None = "openai",
                       device: str | None = None, cache_dir: Path | None = None) -> ClipSimilarity:
        """At the pinned commit (`open_clip_weights`); `pretrained=None` keeps random weights (plumbing runs)."""
        import open_clip

        model, preprocess, revision = create_pinned(model_name, pretrained, cache_dir)
        return cls(model, preprocess, open_clip.get_tokenizer(model_name), device, revision=revision)

    @torch.no_grad()
    def image_features(self, image: Image.Image) -> torch.Tensor:
        pixels = self.preprocess(image.convert("RGB"))[None].to(self.device)
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, text: str) -> torch.Tensor:
        return F.normalize(self.model.encode_text(self.tokenizer([text]).to(self.device)).float(), dim=-1)


def common_images(reference_dir: Path, candidate_dir: Path, pattern: str = "**/*.png") -> list[tuple[Path, Path]]:
    """(reference, candidate) pairs at the same relative path under both directories."""
    pairs = [(p, candidate_dir / p.relative_to(reference_dir)) for p in sorted(reference_dir.glob(pattern))]
    return [(r, c) for r, c in pairs if c.exists()]


def image_fidelity(reference_dir: Path, candidate_dir: Path, pattern: str = "**/*.png",
                   lpips: Perceptual | None = None, clip: ClipSimilarity | None = None,
                   prompts: Mapping[str, str] | None = None) -> dict[str, float]:
    """Means over the images present under both directories: PSNR (dB, capped at 100), SSIM, and with the models
    given LPIPS, CLIP image-image cosine, and CLIP image-text cosine of the candidate and of the reference
    (`prompts` maps a path relative to the directories to its prompt)."""
    pairs = common_images(reference_dir, candidate_dir, pattern)
    if not pairs:
        raise ValueError(f"no images in common between {reference_dir} and {candidate_dir}")
    values: dict[str, list[float]] = {}
    for ref_path, cand_path in pairs:
        ref, cand = _load(ref_path), _load(cand_path)
        if ref.shape != cand.shape:
            raise ValueError(f"{cand_path} is {tuple(cand.shape[2:])}, its reference is {tuple(ref.shape[2:])}")
        # identical images have infinite PSNR; cap at 100 dB so means stay finite
        values.setdefault("psnr", []).append(min(peak_signal_noise_ratio(cand, ref, data_range=1.0).item(), 100.0))
        values.setdefault("ssim", []).append(structural_similarity_index_measure(cand, ref, data_range=1.0).item())
        if lpips is not None:
            values.setdefault("lpips", []).append(lpips(ref, cand))
        if clip is not None:
            with Image.open(ref_path) as r, Image.open(cand_path) as c:
                ref_f, cand_f = clip.image_features(r), clip.image_features(c)
            values.setdefault("clip_image", []).append(float((ref_f * cand_f).sum()))
            prompt = (prompts or {}).get(str(ref_path.relative_to(reference_dir)))
            if prompt is not None:
                text = clip.text_features(prompt)
                values.setdefault("clip_text", []).append(float((cand_f * text).sum()))
                values.setdefault("clip_text_reference", []).append(float((ref_f * text).sum()))
    return {**{k: float(np.mean(v)) for k, v in values.items()}, "images": len(pairs)}


def comparison_grid(prompts: Sequence[str], columns: Mapping[str, Sequence[Path]], out: Path,
                    cell: int = 192, text_width: int = 220) -> Path:
    """A PNG with one row per prompt: the prompt's text, then the image of each column (e.g. BF16, then each
    quantized variant), all resized to `cell` pixels, under a header of the column names."""
    for name, paths in columns.items():
        if len(paths) != len(prompts):
            raise ValueError(f"column {name!r} has {len(paths)} images for {len(prompts)} prompts")
    header = 24
    grid = Image.new("RGB", (text_width + cell * len(columns), header + cell * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(columns):
        draw.text((text_width + j * cell + 4, 6), name, fill="black")
    for i, prompt in enumerate(prompts):
        top = header + i * cell
        draw.multiline_text((4, top + 4), "\n".join(textwrap.wrap(prompt, width=text_width // 7)[:12]), fill="black")
        for j, paths in enumerate(columns.values()):
            with Image.open(paths[i]) as image:
                grid.paste(image.convert("RGB").resize((cell, cell), Image.BICUBIC), (text_width + j * cell, top))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.partial.png")
    grid.save(tmp)
    tmp.replace(out)
    return out
