"""GenEval's color classifier: open_clip ViT-L-14 (OpenAI weights) zero-shot over 10 colors on the detection's
masked crop (object pixels kept, the rest #999 grey, cropped to the box), logits 100 x cosine, fp16 autocast on GPU.

Per detected class the classifier averages 3 templates per color ("a photo of a {c} {cls}", "a photo of a
{c}-colored {cls}", "a photo of a {c} object"), each L2-normalised, and normalises the mean again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from flux158.eval.geneval.rules import Detection
from flux158.eval.open_clip_weights import create_pinned

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
BACKGROUND = (153, 153, 153)  # #999


def masked_crop(image: Image.Image, det: Detection) -> Image.Image:
    """The object's pixels on #999 grey (all pixels when there is no mask), cropped to its box."""
    if det.mask is not None:
        blank = Image.new("RGB", image.size, BACKGROUND)
        image = Image.composite(image, blank, Image.fromarray(det.mask))
    return image.crop(det.box)


class ColorClassifier:
    """`classify(image, cls, detections) -> color names`; build with `from_open_clip`."""

    def __init__(self, model: torch.nn.Module, preprocess, tokenizer, device: str, batch_size: int = 16,
                 revision: str = "as given") -> None:
        self.model, self.preprocess, self.tokenizer = model.to(device).eval(), preprocess, tokenizer
        self.device, self.batch_size, self.revision = device, batch_size, revision
        self._weights: dict[str, torch.Tensor] = {}

    @classmethod
    def from_open_clip(cls, model_name: str = "ViT-L-14", pretrained: str | None = "openai",
                       device: str | None = None, cache_dir: Path | None = None) -> ColorClassifier:
        """open_clip's model and val transform at the pinned commit (`open_clip_weights`); `pretrained=None` keeps
        random weights (tests)."""
        import open_clip

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, preprocess, revision = create_pinned(model_name, pretrained, cache_dir)
        return cls(model, preprocess, open_clip.get_tokenizer(model_name), device, revision=revision)

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.device.startswith("cuda") else torch.autocast(
            "cpu", enabled=False)

    def class_weights(self, cls: str) -> torch.Tensor:
        """(dim, 10) zero-shot weights for objects of class `cls` (open_clip's builder), cached."""
        if cls not in self._weights:
            from open_clip.zero_shot_classifier import build_zero_shot_classifier  # open_clip loads on first use

            templates = [lambda c, t=t: t.format(c=c, cls=cls) for t in TEMPLATES]
            with self._autocast():
                weights = build_zero_shot_classifier(self.model, self.tokenizer, COLORS, templates,
                                                     num_classes_per_batch=None, device=self.device)
            self._weights[cls] = weights.float()
        return self._weights[cls]

    @torch.no_grad()
    def classify(self, image: Image.Image | np.ndarray, cls: str, detections: Sequence[Detection]) -> list[str]:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        weights, names = self.class_weights(cls), []
        for start in range(0, len(detections), self.batch_size):
            crops = [self.preprocess(masked_crop(image, d)) for d in detections[start:start + self.batch_size]]
            with self._autocast():
                features = F.normalize(self.model.encode_image(torch.stack(crops).to(self.device)).float(), dim=-1)
            names += [COLORS[i] for i in (100.0 * features @ weights).argmax(dim=1).tolist()]
        return names
