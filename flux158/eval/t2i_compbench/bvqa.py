"""B-VQA (T2I-CompBench's color, shape and texture metric): one BLIP VQA question per spaCy noun phrase of the
prompt ("<phrase>?"), each scored P(yes) / (P(yes) + P(no)) from the decoder's first step, rounded to 4 decimals,
and the image's score is their product (4 decimals).

Model: transformers `BlipForQuestionAnswering` with `Salesforce/blip-vqa-capfilt-large`, the same checkpoint as the
original `model_base_vqa_capfilt_large.pth`. Documented differences from the official (salesforce/BLIP) code:
- HF converted the checkpoint at 384 px; the official run uses 480. `image_size=480` interpolates the position
  embeddings (384 -> 480), which is close but not identical to the original's.
- The official code replaces [CLS] with [ENC] (id 30523) in the question; HF does not. This module does.
- The decoder cross-attends with the padded question mask, as the original (HF's `generate` uses all ones).
spaCy: the official requirements pin `en_core_web_sm` 3.5.0, a GitHub release wheel, not on PyPI:
`pip install https://github.com/explosion/spacy-models/releases/download/en_core_web_sm-3.5.0/en_core_web_sm-3.5.0-py3-none-any.whl`.
A different parser version changes the questions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flux158.eval.errors import WeightsUnavailableError
from flux158.eval.t2i_compbench.hub import from_hub

BLIP_VQA = "Salesforce/blip-vqa-capfilt-large"
EXCLUDED_PHRASES = ("top", "the side", "the left", "the right")
MAX_PHRASES = 8
MAX_QUESTION_WORDS = 50
SPACY_MODEL = "en_core_web_sm"


def pre_question(question: str, max_words: int = MAX_QUESTION_WORDS) -> str:
    """BLIP's question cleaning: lowercase, drop . ! " ( ) * # : ; ~, strip trailing spaces, keep 50 words."""
    question = re.sub(r"[.!\"()*#:;~]", "", question.lower()).rstrip(" ")
    words = question.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else question


def questions_from_phrases(noun_chunks: Iterable[str]) -> list[str]:
    """The questions for a prompt's noun chunks (spaCy `doc.noun_chunks` texts, in order)."""
    phrases = [c for c in noun_chunks if c not in EXCLUDED_PHRASES][:MAX_PHRASES]
    return [pre_question(p + "?") for p in phrases]


def load_spacy(model: str = SPACY_MODEL):
    """spaCy's English pipeline, with install instructions when it is missing."""
    try:
        import spacy

        return spacy.load(model)
    except (ImportError, OSError) as e:
        raise WeightsUnavailableError(
            f"B-VQA needs spaCy and its {model} pipeline ({e}). Install the pinned one: pip install spacy && pip "
            f"install https://github.com/explosion/spacy-models/releases/download/{model}-3.5.0/"
            f"{model}-3.5.0-py3-none-any.whl") from None


def _four_decimals(x: float) -> float:
    return float(f"{x:.4f}")  # upstream writes '{:.4f}' and reads the number back


class BlipVQA:
    """`yes_probabilities(image, questions)` and `score(image, questions)`; `from_pretrained` for the real model."""

    def __init__(self, model, tokenizer, image_processor, device: str | None = None,
                 interpolate_pos_encoding: bool = False) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer, self.image_processor = model.to(self.device).eval(), tokenizer, image_processor
        self.interpolate = interpolate_pos_encoding
        self.enc_id = tokenizer.convert_tokens_to_ids("[ENC]")
        self.yes_id, self.no_id = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
        if self.enc_id == tokenizer.unk_token_id:
            raise ValueError("the tokenizer has no [ENC] token; BLIP's VQA encoder expects it at position 0")

    @classmethod
    def from_pretrained(cls, model_id: str = BLIP_VQA, image_size: int = 480, revision: str | None = None,
                        device: str | None = None, cache_dir: Path | None = None) -> BlipVQA:
        from transformers import AutoTokenizer, BlipForQuestionAnswering, BlipImageProcessor

        model, tokenizer, processor = from_hub(model_id, BlipForQuestionAnswering, AutoTokenizer, BlipImageProcessor,
                                               revision=revision, cache_dir=cache_dir)
        processor.size = {"height": image_size, "width": image_size}
        return cls(model, tokenizer, processor, device, interpolate_pos_encoding=image_size != 384)

    @torch.no_grad()
    def yes_probabilities(self, image: Image.Image | np.ndarray, questions: Sequence[str]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) per question, rounded to 4 decimals."""
        if not questions:
            return []
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        pixels = self.image_processor(images=image.convert("RGB"), return_tensors="pt").pixel_values.to(self.device)
        image_embeds = self.model.vision_model(pixel_values=pixels, interpolate_pos_encoding=self.interpolate)[0]
        q = self.tokenizer(list(questions), padding="longest", truncation=True, max_length=35,
                           return_tensors="pt").to(self.device)
        ids = q.input_ids.clone()
        ids[:, 0] = self.enc_id  # the official encoder input starts with [ENC], not [CLS]
        n = ids.shape[0]
        image_embeds = image_embeds.expand(n, -1, -1)
        image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=self.device)
        q_embeds = self.model.text_encoder(input_ids=ids, attention_mask=q.attention_mask,
                                           encoder_hidden_states=image_embeds,
                                           encoder_attention_mask=image_mask)[0]
        start = torch.full((n, 1), self.model.decoder_start_token_id, dtype=torch.long, device=self.device)
        logits = self.model.text_decoder(input_ids=start, encoder_hidden_states=q_embeds,
                                         encoder_attention_mask=q.attention_mask).logits[:, 0, :]
        p = logits.float().softmax(dim=-1)
        ratio = p[:, self.yes_id] / (p[:, self.yes_id] + p[:, self.no_id])
        return [_four_decimals(v) for v in ratio.tolist()]

    def score(self, image: Image.Image | np.ndarray, questions: Sequence[str]) -> float:
        """The image's B-VQA score: the product of its questions' rounded yes-probabilities (1 with none)."""
        return _four_decimals(math.prod(self.yes_probabilities(image, questions)))
