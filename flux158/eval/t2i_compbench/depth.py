"""Depth for T2I-CompBench's 3D-spatial category: DPT-Hybrid (MiDaS v3) inverse depth (larger = closer) through
transformers (`Intel/dpt-hybrid-midas`, believed to be the same weights as upstream's
`dpt_hybrid-midas-501f0c75.pt`; unverified here), post-processed as upstream does. The map is min-max normalised,
resized back to the image, stored as an 8-bit PNG and re-read at the detector's resolution. This module keeps that
8-bit quantisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from flux158.eval.t2i_compbench.hub import from_hub

DPT_HYBRID = "Intel/dpt-hybrid-midas"
DEPTH_INPUT = 480
DETECTOR_SHORT, DETECTOR_MAX = 479, 480  # torchvision Resize(479, max_size=480): 1024^2 -> 479^2


# UniDet's input resolution, as upstream computes it: torchvision's Resize(479, max_size=480) on the PIL image
TO_DETECTOR_RESOLUTION = transforms.Resize(DETECTOR_SHORT, max_size=DETECTOR_MAX)


class DepthEstimator:
    """`inverse_depth(image)` in [0, 1] at the image's size, and `detector_space(image)` as upstream re-reads it."""

    def __init__(self, model, device: str | None = None) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()

    @classmethod
    def from_pretrained(cls, model_id: str = DPT_HYBRID, revision: str | None = None, device: str | None = None,
                        cache_dir: Path | None = None) -> DepthEstimator:
        from transformers import DPTForDepthEstimation

        (model,) = from_hub(model_id, DPTForDepthEstimation, revision=revision, cache_dir=cache_dir)
        return cls(model, device)

    @torch.no_grad()
    def inverse_depth(self, image: Image.Image) -> np.ndarray:
        """Resize to 480^2 (bilinear), normalise to [-1, 1], predict (fp16 autocast on GPU), min-max normalise,
        then bilinear (align_corners) back to the image size."""
        image = image.convert("RGB")
        x = np.asarray(image.resize((DEPTH_INPUT, DEPTH_INPUT), Image.BILINEAR), dtype=np.float32) / 255.0
        x = torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1)[None].to(self.device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.startswith("cuda")):
            depth = self.model(pixel_values=x).predicted_depth.float()
        depth = (depth - depth.min()) / (depth.max() - depth.min()).clamp_min(1e-12)
        depth = F.interpolate(depth[:, None], size=(image.height, image.width), mode="bilinear", align_corners=True)
        return depth[0, 0].cpu().numpy()

    def detector_space(self, image: Image.Image) -> np.ndarray:
        """The map as the 3D rule reads it: 8-bit (255 x depth, truncated), resized like the detector input, / 255."""
        png = Image.fromarray((255 * self.inverse_depth(image)).astype(np.uint8), mode="L")
        resized = TO_DETECTOR_RESOLUTION(png)
        return np.asarray(resized, dtype=np.float64) / 255.0
