"""FLUX from the Hugging Face hub (or a local copy), with preflight checks that fail fast and say what to do."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from flux158.errors import ModelUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubFluxSpec:
    """A diffusers-format FLUX pipeline: a hub repo id (e.g. `black-forest-labs/FLUX.1-dev`) or a local directory."""

    pretrained: str
    revision: str | None = None
    gated: bool = False

    @property
    def is_local(self) -> bool:
        return self.pretrained.startswith((".", "/", "~")) or Path(self.pretrained).expanduser().exists()


def _how_to_get(spec: HubFluxSpec) -> str:
    repo, local = spec.pretrained, "/path/to/" + spec.pretrained.split("/")[-1]
    licence = f"accept the licence at https://huggingface.co/{repo} (the repo is gated), then " if spec.gated else ""
    return (
        "To fix it, either:\n"
        f"  - {licence}log in with `huggingface-cli login` (or `hf auth login`, or set HF_TOKEN) and run where "
        "huggingface.co is reachable; or\n"
        f"  - download it where the hub is reachable (`huggingface-cli download {repo} --local-dir {local}`), "
        f"copy it here and use that directory as the model (run.py: model.pretrained={local})."
    )


def _cached_snapshot(spec: HubFluxSpec) -> str | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(spec.pretrained, revision=spec.revision, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def resolve_pretrained(spec: HubFluxSpec) -> str:
    """Check that the weights can be loaded before any work starts; return what to pass to `from_pretrained`.

    Raises:
        ModelUnavailableError: the local path lacks a pipeline, the repo is gated or unknown to this account, or
            the hub is unreachable (or `HF_HUB_OFFLINE=1`) and the weights are not in the local cache.
    """
    if spec.is_local:
        path = Path(spec.pretrained).expanduser()
        if not (path / "model_index.json").exists():
            raise ModelUnavailableError(
                f"model.pretrained={spec.pretrained} is not a diffusers pipeline directory (no model_index.json)."
            )
        return str(path)

    from huggingface_hub import auth_check
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if not offline:
        try:
            auth_check(spec.pretrained)
            return spec.pretrained
        except GatedRepoError:
            raise ModelUnavailableError(
                f"{spec.pretrained} is gated and this account has no access to it.\n{_how_to_get(spec)}"
            ) from None
        except RepositoryNotFoundError:
            raise ModelUnavailableError(
                f"{spec.pretrained} was not found on the hub, or it needs a login this machine does not have.\n"
                f"{_how_to_get(spec)}"
            ) from None
        except Exception as e:  # network failures come as httpx/requests/OS errors depending on the backend
            log.warning("The hub is unreachable (%s: %s); trying the local cache", type(e).__name__, e)
    snapshot = _cached_snapshot(spec)
    if snapshot is None:
        hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise ModelUnavailableError(
            f"{spec.pretrained} is not in the local Hugging Face cache (HF_HOME={hf_home}) and the hub "
            f"{'is disabled (HF_HUB_OFFLINE=1)' if offline else 'cannot be reached'}.\n{_how_to_get(spec)}"
        )
    return snapshot


# `transformer/config.json` of black-forest-labs/FLUX.1-dev (architecture only), so its shapes are known offline.
FLUX1_DEV_TRANSFORMER_CONFIG = {
    "patch_size": 1, "in_channels": 64, "out_channels": None, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}


# The other components of black-forest-labs/FLUX.1-dev (architecture keys of text_encoder_2/, text_encoder/ and vae/
# config.json): T5-v1.1-XXL's encoder, CLIP ViT-L/14's text tower and the 16-channel FLUX VAE. With the transformer's
# they size a random-weight pipeline for whole-pipeline memory (`flux158.models.random`).
FLUX1_DEV_T5_CONFIG = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6, "is_encoder_decoder": False, "pad_token_id": 0, "eos_token_id": 1,
    "decoder_start_token_id": 0, "tie_word_embeddings": False,
}
FLUX1_DEV_CLIP_CONFIG = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "projection_dim": 768, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
FLUX1_DEV_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "norm_num_groups": 32, "act_fn": "silu", "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "use_quant_conv": False, "use_post_quant_conv": False, "force_upcast": True, "mid_block_add_attention": True,
}
# scheduler/scheduler_config.json of FLUX.1-dev
FLUX1_DEV_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
    "base_image_seq_len": 256, "max_image_seq_len": 4096,
}


def meta_flux_transformer(config: dict | None = None):
    """A FLUX transformer on the meta device (default FLUX.1-dev's): real shapes, no memory, no download.

    `config` may be a diffusers `config.json` as stored (its private `_...` keys are ignored)."""
    import torch
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel.from_config(config or FLUX1_DEV_TRANSFORMER_CONFIG)


def transformer_folder(spec: HubFluxSpec) -> Path:
    """The local `transformer/` folder of the pipeline (downloading only that folder when online)."""
    source = resolve_pretrained(spec)
    if Path(source).is_dir():
        return Path(source) / "transformer"
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(spec.pretrained, revision=spec.revision, allow_patterns=["transformer/*"])) / (
        "transformer")
