"""Build the GenEval scorer from plain settings: the official models, or shrunk random-weight ones for plumbing
runs (`weights="random"`: a small Mask2Former of the same classes and a tiny open_clip model; verdicts are noise)."""

from __future__ import annotations

from pathlib import Path

from flux158.eval import pins
from flux158.eval.geneval.colors import ColorClassifier
from flux158.eval.geneval.detector import HF_MODEL, TINY_MMDET_OPTIONS, Detector, HFMask2Former, MMDetMask2Former
from flux158.eval.geneval.scoring import GenEvalScorer
from flux158.eval.geneval.weights import MASK2FORMER_SWIN_S_MMDET3

DETECTORS = ("mmdet", "hf")
TINY_CLIP = "flux158-tiny-clip"


def build_detector(kind: str = "mmdet", weights: str = "pretrained", device: str | None = None,
                   checkpoint: Path | None = None, cache_dir: Path | None = None,
                   trust_checkpoint: bool = False) -> Detector:
    if kind not in DETECTORS:
        raise ValueError(f"unknown GenEval detector {kind!r}; choose one of {DETECTORS}")
    random = weights == "random"
    if kind == "mmdet":
        if random:
            return MMDetMask2Former(None, device, options=TINY_MMDET_OPTIONS)
        if checkpoint is not None:
            return MMDetMask2Former(Path(checkpoint), device, trust_checkpoint=trust_checkpoint)
        return MMDetMask2Former(device=device, cache_dir=cache_dir, trust_checkpoint=trust_checkpoint)
    if random:
        from transformers import Mask2FormerConfig, SwinConfig

        backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
        config = Mask2FormerConfig(backbone_config=backbone, use_pretrained_backbone=False, feature_size=32,
                                   mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64,
                                   dim_feedforward=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                                   num_queries=10, num_labels=80)
        return HFMask2Former(device=device, config=config)
    return HFMask2Former(device=device, cache_dir=cache_dir)


def register_tiny_clip() -> str:
    """Register the shrunk open_clip config (for random-weight plumbing runs) and return its name."""
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        open_clip.add_model_config(Path(__file__).with_name(f"{TINY_CLIP}.json"))  # registered by file stem
    return TINY_CLIP


def build_colors(weights: str = "pretrained", model: str = "ViT-L-14", pretrained: str = "openai",
                 device: str | None = None, cache_dir: Path | None = None) -> ColorClassifier:
    if weights == "random":
        return ColorClassifier.from_open_clip(register_tiny_clip(), None, device)
    return ColorClassifier.from_open_clip(model, pretrained, device, cache_dir)


def build_scorer(detector: str = "mmdet", weights: str = "pretrained", device: str | None = None,
                 checkpoint: Path | None = None, clip_model: str = "ViT-L-14", clip_pretrained: str = "openai",
                 cache_dir: Path | None = None, trust_checkpoint: bool = False) -> GenEvalScorer:
    if weights not in ("pretrained", "random"):
        raise ValueError(f"GenEval evaluator weights must be pretrained or random, got {weights!r}")
    random = weights == "random"
    description = {
        "detector": f"{detector} Mask2Former " + ("(shrunk, random weights)" if random else
                                                  str(checkpoint or "Swin-S COCO instance, pinned checkpoint")),
        "colors": f"open_clip {TINY_CLIP} (random weights)" if random else f"open_clip {clip_model}/{clip_pretrained}",
    }
    model = build_detector(detector, weights, device, checkpoint, cache_dir, trust_checkpoint)
    colors = build_colors(weights, clip_model, clip_pretrained, device, cache_dir)
    if not random:
        sha256 = getattr(model, "checkpoint_sha256", None)
        loaded = f"{checkpoint or MASK2FORMER_SWIN_S_MMDET3.filename} sha256 {sha256}"
        description["revisions"] = {
            **(pins.recorded([HF_MODEL]) if detector == "hf" else {"mmdet": loaded}),
            f"open_clip {clip_model}/{clip_pretrained}": colors.revision}
    return GenEvalScorer(model, colors, description=description)
