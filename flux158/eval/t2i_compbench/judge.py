"""S-CoT: T2I-CompBench++'s ShareGPT4V-CoT MLLM judge (`MLLM_eval/ShareGPT4V-CoT_eval/Share_eval.py`), the metric
the 1.58-bit FLUX paper reports for non-spatial and complex.

Protocol (chain of thought on): the judge first describes the image under a category-specific instruction, then,
in the same conversation, rates the prompt's portrayal on a 1-5 scale and answers in JSON. Levels map to
20/40/60/80/100; the image score is the product of its answers' levels (one answer for these categories), 100 when
an answer cannot be parsed (upstream's `except: continue`). Upstream writes 0-100; this module divides by 100 so
categories share the paper's 0-1 scale.

Two backends behind `score(image, prompt, category)`:
- `ShareGPT4VJudge`: in this environment through transformers' LLaVA, from a LLaVA-format (HF) checkpoint. The
  judge the paper used, `Lin-Chen/ShareGPT4V-7B`, is published in the original LLaVA layout; convert it once with
  transformers' `models/llava/convert_llava_weights_to_hf.py` and pass the converted folder. Any other LLaVA-1.5
  checkpoint runs but is a different judge.
- the official runner (`official.OfficialRunner.judge`), upstream's script in its own environment.

Deviations of the in-environment judge: sampling (temperature 0.2, top-p 0.7, as upstream) is seeded per image
here, upstream is unseeded; HF's LLaVA processor is used instead of upstream's `process_images` (images are padded
to a square with the processor's mean colour first, as `image_aspect_ratio: pad` does; a no-op on square images).
Only the single-question categories are supported; color/shape/texture ask one question per noun phrase upstream
and the paper scores them with B-VQA.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from flux158.eval.errors import WeightsUnavailableError

SHAREGPT4V = "Lin-Chen/ShareGPT4V-7B"
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions.")
# upstream writes its prompts as backslash-continued f-strings, so each continuation keeps 16 spaces of indentation
_W = " " * 16
_DESCRIBE = "Briefly describe the image within 50 words"
INSTRUCTIONS = {
    "spatial": f"You are my assistant to identify objects and their spatial layout in the image. {_W}{_DESCRIBE}.",
    "action": f"You are my assistant to identify the actions, events, objects and their relationships in the image. "
              f"{_W}{_DESCRIBE}.",
    "complex": f"You are my assistant to evaluate the correspondence of the image to a given text prompt. {_W}"
               f"{_DESCRIBE}, focus on the objects in the image and their attributes (such as color, shape, texture), "
               f"{_W}spatial layout and action relationships.",
    "numeracy": f"You are my assistant to identify objects and their quantities in the image. {_W}{_DESCRIBE}, focus "
                "on the objects in the image and their quantity.",
}
INSTRUCTIONS["3d_spatial"] = INSTRUCTIONS["spatial"]
_JSON = "Provide your analysis and explanation in JSON format with the following keys: score (e.g., 2),"
_CRITERIA = {
    "spatial": ["1: image almost irrelevant to the text.", "2: image not aligned properly with the text.",
                "3: spatial layout not aligned properly with the text.",
                "4: basically, spatial layout of objects matches the text.",
                "5: correct spatial layout in the image for all objects mentioned in the text."],
    "action": ["5: the image accurately portrayed the actions, events and relationships between objects described in "
               "the text.",
               "4: the image portrayed most of the actions, events and relationships but with minor discrepancies.",
               "3: the image depicted some elements, but action relationships between objects are not correct.",
               "2: the image failed to convey the full scope of the text.",
               "1: the image did not depict any actions or events that match the text."],
    "complex": ["5: the image perfectly matches the content of the text prompt, with no discrepancies.",
                "4: the image portrayed most of the actions, events and relationships but with minor discrepancies.",
                "3: the image depicted some elements in the text prompt, but ignored some key parts or details.",
                "2: the image did not depict any actions or events that match the text.",
                "1: the image failed to convey the full scope in the text prompt."],
}
LEVELS = {1: 20, 2: 40, 3: 60, 4: 80, 5: 100}
UPSTREAM_CATEGORY = {"spatial": "spatial", "3d_spatial": "3d_spatial", "non_spatial": "action",
                     "numeracy": "numeracy", "complex": "complex"}


def upstream_category(category: str) -> str:
    if category not in UPSTREAM_CATEGORY:
        raise ValueError(f"S-CoT scores {sorted(UPSTREAM_CATEGORY)}, not {category!r} (the paper uses B-VQA for "
                         "color, shape and texture)")
    return UPSTREAM_CATEGORY[category]


def question(category: str, prompt: str) -> str:
    """The rating question for `prompt`, with upstream's wording and whitespace."""
    kind = upstream_category(category)
    nl = f" \n {_W}"
    if kind in ("spatial", "3d_spatial"):
        head = f'According to the image and your previous answer, evaluate if the text "{prompt}" is correctly ' \
               f"portrayed in the image.{nl}Give a score from 1 to 5, according the criteria:{nl}"
        return head + nl.join(_CRITERIA["spatial"]) + nl + _JSON + nl + "explanation (within 20 words)."
    if kind == "action":
        head = f'According to the image and your previous answer, evaluate if the text "{prompt}" is correctly ' \
               f"portrayed in the image. {_W}Give a score from 1 to 5, according the criteria:{nl}"
        return head + nl.join(_CRITERIA["action"]) + nl + _JSON + f" {_W}explanation (within 20 words)."
    if kind == "complex":
        head = "According to the image and your previous answer, evaluate how well the image aligns with the text " \
               f'prompt: "{prompt}". {_W}Give a score from 1 to 5, according the criteria:{nl}'
        return head + nl.join(_CRITERIA["complex"]) + nl + _JSON + f" {_W}explanation (within 20 words)."
    # numeracy's block is written slightly differently upstream (no space after one newline, two after another)
    return (" According to the image and your previous answer, evaluate how well the image aligns with the text "
            f'prompt: "{prompt}" {_W}Give a score from 1 to 5, according the criteria: \n{_W}'
            f"5: correct numerical content in the image for all objects mentioned in the text.{nl}"
            f"4: basically, numerical content of objects matches the text. \n  {_W}"
            f"3: numerical content not aligned properly with the text.{nl}"
            f"2: image not aligned properly with the text.{nl}1: image almost irrelevant to the text.{nl}"
            f"{_JSON} explanation (within 20 words).")


def describe_turn(category: str) -> str:
    """The first turn of the conversation, up to the judge's description."""
    return f"{SYSTEM} USER: <image>\n{INSTRUCTIONS[upstream_category(category)]} ASSISTANT:"


def rate_turn(category: str, prompt: str, description: str) -> str:
    """The whole conversation up to the judge's rating."""
    return f"{describe_turn(category)}{description}</s> USER: {question(category, prompt)} ASSISTANT:"


def parse_level(answer: str) -> int | None:
    """The 1-5 level of a JSON answer, read as upstream does (a missing closing brace is appended after a quote,
    newlines dropped); None when it cannot be read."""
    if not answer:
        return None
    if not answer.endswith("}"):
        answer += '"\n}'
    try:
        level = json.loads(answer.replace("\n", ""))["score"]
    except (json.JSONDecodeError, TypeError, KeyError):
        return None
    try:
        return int(str(level)) if int(str(level)) in LEVELS else None
    except ValueError:
        return None


def image_score(answers: list[str]) -> float:
    """The product of the answers' levels / 100 in [0, 1]; an unreadable answer counts as 1 (upstream)."""
    score = 1.0
    for answer in answers:
        level = parse_level(answer)
        if level is not None:
            score *= LEVELS[level] / 100
    return score


def _pad_to_square(image: Image.Image, mean: list[float]) -> Image.Image:
    side = max(image.size)
    if image.width == image.height:
        return image
    canvas = Image.new("RGB", (side, side), tuple(int(255 * m) for m in mean))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


class ShareGPT4VJudge:
    """S-CoT with a LLaVA-format checkpoint: `conversation(image, prompt, category)` and `score(...)`."""

    def __init__(self, model, processor, device: str | None = None, seed: int = 0, max_new_tokens: int = 512,
                 temperature: float = 0.2, top_p: float = 0.7) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.processor = model.to(self.device).eval(), processor
        self.seed, self.max_new_tokens, self.temperature, self.top_p = seed, max_new_tokens, temperature, top_p

    @classmethod
    def from_pretrained(cls, model_path: str | Path, device: str | None = None, cache_dir: Path | None = None,
                        dtype: torch.dtype | None = None) -> ShareGPT4VJudge:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)
        try:
            model = LlavaForConditionalGeneration.from_pretrained(model_path, dtype=dtype, cache_dir=cache_dir)
            processor = AutoProcessor.from_pretrained(model_path, cache_dir=cache_dir)
        except (OSError, ValueError) as e:
            raise WeightsUnavailableError(
                f"cannot load a LLaVA-format judge from {model_path} ({e}). {SHAREGPT4V} is published in the "
                "original LLaVA layout: convert it with transformers' convert_llava_weights_to_hf.py and pass the "
                "converted folder, or score S-CoT with the official runner") from None
        return cls(model, processor, device)

    @torch.no_grad()
    def _reply(self, conversation: str, image: Image.Image) -> str:
        inputs = self.processor(images=image, text=conversation, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        inputs.pop("token_type_ids", None)  # BERT-style tokenizers add them; LLaVA's language model takes none
        out = self.model.generate(**inputs, do_sample=True, temperature=self.temperature, top_p=self.top_p,
                                  max_new_tokens=self.max_new_tokens)
        reply = self.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return reply.strip().removesuffix("</s>").strip()

    def conversation(self, image: Image.Image, prompt: str, category: str, key: int = 0) -> tuple[str, str]:
        """(description, rating answer) for one image; `key` (e.g. the question id) seeds the sampling."""
        torch.manual_seed(self.seed + key)
        image = _pad_to_square(image.convert("RGB"), self.processor.image_processor.image_mean)
        description = self._reply(describe_turn(category), image)
        return description, self._reply(rate_turn(category, prompt, description), image)

    def score(self, image: Image.Image, prompt: str, category: str, key: int = 0) -> float:
        return image_score([self.conversation(image, prompt, category, key)[1]])
