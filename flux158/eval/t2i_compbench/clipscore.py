"""CLIPScore for T2I-CompBench's non-spatial category: OpenAI CLIP ViT-B/32, the raw cosine similarity of the
L2-normalised image and text features (no x100, x2.5 or clipping), through transformers' `CLIPModel`
(`openai/clip-vit-base-patch32`, the same weights). Upstream runs fp16 on CUDA; this runs fp32 (about 1e-3 apart).
Upstream's `clip.tokenize` raises on prompts over 77 tokens; so does this."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from flux158.eval.t2i_compbench.hub import from_hub

CLIP_B32 = "openai/clip-vit-base-patch32"


class CLIPScore:
    """`score(image, text) -> cosine`; `from_pretrained` loads the hub model, tests pass a random one."""

    def __init__(self, model, tokenizer, image_processor, device: str | None = None) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer, self.image_processor = model.to(self.device).eval(), tokenizer, image_processor

    @classmethod
    def from_pretrained(cls, model_id: str = CLIP_B32, revision: str | None = None, device: str | None = None,
                        cache_dir: Path | None = None) -> CLIPScore:
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        return cls(*from_hub(model_id, CLIPModel, CLIPTokenizer, CLIPImageProcessor, revision=revision,
                             cache_dir=cache_dir), device)

    @torch.no_grad()
    def score(self, image: Image.Image | np.ndarray, text: str) -> float:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        tokens = self.tokenizer(text, return_tensors="pt")
        limit = self.model.config.text_config.max_position_embeddings
        if tokens.input_ids.shape[1] > limit:
            raise ValueError(f"prompt is longer than CLIP's {limit} tokens: {text!r}")
        pixels = self.image_processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
        image_features = _features(self.model.get_image_features(pixel_values=pixels.to(self.device)))
        text_features = _features(self.model.get_text_features(**tokens.to(self.device)))
        return float(F.cosine_similarity(image_features.float(), text_features.float()).item())


def _features(output) -> torch.Tensor:
    """transformers >= 5 returns an output object with `pooler_output`; earlier versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
