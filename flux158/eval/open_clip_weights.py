"""open_clip models at a pinned hub commit, with the settings of their pretrained tag.

open_clip resolves a tag such as `ViT-L-14/openai` to a hub repo at `main`, and (open_clip 3.x) only warns when the
tag was trained with QuickGELU but the model config lacks it, so `create_model_and_transforms("ViT-L-14", "openai")`
runs OpenAI's QuickGELU weights through plain GELU. Here the tag's own record (`open_clip.get_pretrained_cfg`) supplies
the activation and preprocessing, and the weights file comes from the commit pinned in `flux158/eval/pins.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from flux158.eval import pins
from flux158.eval.errors import WeightsUnavailableError


def tag_source(model_name: str, pretrained: str) -> tuple[str, str | None, dict] | None:
    """(hub repo, file name or None for open_clip's default, tag record) of an open_clip tag served from the hub;
    None for a file path or a tag open_clip downloads from a URL."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg or not cfg.get("hf_hub"):
        return None
    repo, filename = os.path.split(cfg["hf_hub"])  # "org/name/" (open_clip's default file) or "org/name/file"
    return repo, filename or None, cfg


def create_pinned(model_name: str, pretrained: str | None, cache_dir: Path | None = None,
                  ) -> tuple[torch.nn.Module, object, str]:
    """`(model, val transform, revision recorded)`. `pretrained=None` keeps random weights (tests)."""
    import open_clip
    from open_clip.pretrained import download_pretrained_from_hf

    cache = str(cache_dir) if cache_dir else None
    source = tag_source(model_name, pretrained) if pretrained else None
    try:
        if source is None:  # random weights, a file path, or a URL-served tag: loaded as given
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained,
                                                                         cache_dir=cache)
            return model, preprocess, "random" if pretrained is None else "as given"
        repo, filename, cfg = source
        revision = pins.revision(repo)
        path = download_pretrained_from_hf(repo, filename, revision=revision, cache_dir=cache)
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=path, force_quick_gelu=bool(cfg.get("quick_gelu", False)),
            image_mean=cfg.get("mean"), image_std=cfg.get("std"), image_interpolation=cfg.get("interpolation"),
            image_resize_mode=cfg.get("resize_mode"))
    except (OSError, RuntimeError) as e:  # no network and nothing cached, or a failed checksum
        raise WeightsUnavailableError(
            f"cannot load open_clip {model_name}/{pretrained} ({e}); download it once with internet "
            f"(python scripts/fetch_eval_weights.py; cached under {cache_dir or '~/.cache/huggingface'})") from None
    return model, preprocess, pins.recorded([repo])[repo]
