"""Fidelity of images to references made with the same seeds (e.g. a quantized model vs its BF16 original)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def _load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float()[None] / 255


def image_fidelity(reference_dir: Path, candidate_dir: Path, pattern: str = "**/*.png") -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over the PNGs present under both directories at the same relative path."""
    pairs = [(p, candidate_dir / p.relative_to(reference_dir)) for p in sorted(reference_dir.glob(pattern))]
    pairs = [(r, c) for r, c in pairs if c.exists()]
    if not pairs:
        raise ValueError(f"no images in common between {reference_dir} and {candidate_dir}")
    psnr, ssim = [], []
    for ref_path, cand_path in pairs:
        ref, cand = _load(ref_path), _load(cand_path)
        if ref.shape != cand.shape:
            raise ValueError(f"{cand_path} is {tuple(cand.shape[2:])}, its reference is {tuple(ref.shape[2:])}")
        # identical images have infinite PSNR; cap at 100 dB so means stay finite
        psnr.append(min(peak_signal_noise_ratio(cand, ref, data_range=1.0).item(), 100.0))
        ssim.append(structural_similarity_index_measure(cand, ref, data_range=1.0).item())
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "images": len(pairs)}
