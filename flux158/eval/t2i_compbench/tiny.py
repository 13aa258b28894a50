"""Shrunk, randomly initialised versions of every T2I-CompBench model, for plumbing runs
(`evaluator_weights=random`, e.g. on the tiny FLUX): the real architectures (BLIP VQA, CLIP, DPT, OWLv2, LLaVA) at
toy sizes, a character-level WordPiece tokenizer, and a whitespace stand-in for spaCy. Scores are noise; what
runs is every code path from images to `metrics.json`.
"""

from __future__ import annotations

import string
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from flux158.eval.t2i_compbench.bvqa import BlipVQA
from flux158.eval.t2i_compbench.clipscore import CLIPScore
from flux158.eval.t2i_compbench.depth import DepthEstimator
from flux158.eval.t2i_compbench.judge import ShareGPT4VJudge
from flux158.eval.t2i_compbench.native import NativeDetector

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CHARS = list(string.ascii_lowercase + string.digits + string.punctuation)
_SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


def char_tokenizer():
    """A BERT WordPiece tokenizer over single characters (any lowercase text tokenizes), plus BLIP's [DEC]/[ENC],
    'yes' and 'no', and LLaVA's <image>."""
    from transformers import BertTokenizer

    vocab = _SPECIAL + _CHARS + [f"##{c}" for c in _CHARS] + ["yes", "no", "[DEC]", "[ENC]"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("\n".join(vocab) + "\n")
        return BertTokenizer(str(path), additional_special_tokens=["[DEC]", "[ENC]", "<image>"])


class WhitespaceParser:
    """A stand-in for spaCy's `en_core_web_sm` (not on PyPI): whitespace tokens tagged from small word lists
    (DET, ADP, NUM, ADJ for colours, NOUN otherwise); noun chunks are the parts between ' and '."""

    DET = {"a", "an", "the"}
    ADP = {"on", "of", "in", "to", "near", "behind", "with", "at", "under", "above", "by", "next", "left", "right",
           "top", "bottom", "front", "side", "hidden"}
    NUM = {"one", "two", "three", "four", "five", "six", "seven", "eight"}
    ADJ = {"red", "blue", "green", "yellow", "black", "white", "brown", "pink", "purple", "orange", "gray", "wooden",
           "metallic", "plastic", "round", "square", "big", "small"}

    class _Token:
        def __init__(self, text: str, pos: str) -> None:
            self.text, self.pos_ = text, pos

    class _Doc(list):
        noun_chunks: list

    def _pos(self, word: str) -> str:
        w = word.lower()
        return ("DET" if w in self.DET else "ADP" if w in self.ADP else "NUM" if w in self.NUM
                else "ADJ" if w in self.ADJ else "PUNCT" if w in string.punctuation else "NOUN")

    def __call__(self, text: str) -> _Doc:
        doc = self._Doc(self._Token(w, self._pos(w)) for w in text.replace(".", " .").replace(",", " ,").split())
        doc.noun_chunks = [type("Span", (), {"text": part.strip(" .,")})() for part in text.split(" and ")]
        return doc


def tiny_bvqa(tokenizer, device: str = "cpu") -> BlipVQA:
    from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessor

    ids = tokenizer.convert_tokens_to_ids
    text = {**_SMALL, "vocab_size": len(tokenizer), "encoder_hidden_size": 32, "bos_token_id": ids("[DEC]"),
            "pad_token_id": ids("[PAD]"), "sep_token_id": ids("[SEP]"), "max_position_embeddings": 64}
    vision = {**_SMALL, "image_size": 64, "patch_size": 16}
    model = BlipForQuestionAnswering(BlipConfig(text_config=text, vision_config=vision))
    return BlipVQA(model, tokenizer, BlipImageProcessor(size={"height": 64, "width": 64}), device)


def tiny_clip(tokenizer, device: str = "cpu") -> CLIPScore:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    ids = tokenizer.convert_tokens_to_ids
    config = CLIPConfig(text_config={**_SMALL, "vocab_size": len(tokenizer), "max_position_embeddings": 512,
                                     "bos_token_id": ids("[CLS]"), "eos_token_id": ids("[SEP]")},
                        vision_config={**_SMALL, "image_size": 224, "patch_size": 32}, projection_dim=16)
    return CLIPScore(CLIPModel(config), tokenizer, CLIPImageProcessor(), device)


def tiny_depth(device: str = "cpu") -> DepthEstimator:
    from transformers import DPTConfig, DPTForDepthEstimation

    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16, head_hidden_size=8)
    return DepthEstimator(DPTForDepthEstimation(config), device)


def tiny_detector(tokenizer, labels: Sequence[str], device: str = "cpu") -> NativeDetector:
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor

    ids = tokenizer.convert_tokens_to_ids
    config = Owlv2Config(text_config={**_SMALL, "vocab_size": len(tokenizer), "max_position_embeddings": 32,
                                      "bos_token_id": ids("[CLS]"), "eos_token_id": ids("[SEP]")},
                         vision_config={**_SMALL, "image_size": 64, "patch_size": 16}, projection_dim=32)
    return NativeDetector(Owlv2ForObjectDetection(config), tokenizer, Owlv2ImageProcessor(
        size={"height": 64, "width": 64}), labels, device)


def tiny_judge(tokenizer, device: str = "cpu", max_new_tokens: int = 8) -> ShareGPT4VJudge:
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    ids = tokenizer.convert_tokens_to_ids
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 28},
                                                                  crop_size={"height": 28, "width": 28}),
                               tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config={**_SMALL, "model_type": "clip_vision_model", "num_hidden_layers": 2, "image_size": 28,
                       "patch_size": 14},
        text_config={**_SMALL, "model_type": "llama", "vocab_size": len(tokenizer), "num_key_value_heads": 2,
                     "max_position_embeddings": 4096, "bos_token_id": ids("[CLS]"), "eos_token_id": ids("[SEP]"),
                     "pad_token_id": ids("[PAD]")},
        image_token_index=ids("<image>"), image_seq_length=4)
    return ShareGPT4VJudge(LlavaForConditionalGeneration(config), processor, device, max_new_tokens=max_new_tokens)


def tiny_models(needed: set[str], labels: Sequence[str] = (), device: str = "cpu", seed: int = 0) -> dict:
    """The shrunk random models among `needed` (keyword names of `scoring.score_category`); the detector and
    judge are the native ones."""
    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    builders = {"bvqa": lambda: tiny_bvqa(tokenizer, device), "nlp": WhitespaceParser,
                "clip": lambda: tiny_clip(tokenizer, device), "depth": lambda: tiny_depth(device),
                "detector": lambda: tiny_detector(tokenizer, labels, device),
                "judge": lambda: tiny_judge(tokenizer, device)}
    return {name: build() for name, build in builders.items() if name in needed}
