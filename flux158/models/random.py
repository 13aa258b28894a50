"""FLUX with random weights, built on the device: FLUX.1-dev's exact architecture (or a scaled-down copy) for runs
whose cost and memory depend on the shapes only (latency, the rehearsal of every stage). Images are noise.

The weights are a function of (seed, device type): every stage of one run, on one device, sees the same teacher.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from filelock import FileLock
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from flux158.models.hub import (
    FLUX1_DEV_CLIP_CONFIG,
    FLUX1_DEV_SCHEDULER_CONFIG,
    FLUX1_DEV_T5_CONFIG,
    FLUX1_DEV_TRANSFORMER_CONFIG,
    FLUX1_DEV_VAE_CONFIG,
    meta_flux_transformer,
)
from flux158.models.tokenizers import build_clip_tokenizer, build_t5_tokenizer


@dataclass(frozen=True)
class FluxArchitecture:
    """The `config.json` architecture keys of a FLUX pipeline's four networks."""

    transformer: dict
    t5: dict
    clip: dict
    vae: dict


# `tiny`: the widths of `model=tiny` (flux158.models.tiny) with full vocabularies, so the same path runs on a CPU in
# seconds; `flux-dev`: black-forest-labs/FLUX.1-dev (11.9 B transformer, 4.7 B T5-XXL encoder).
ARCHITECTURES = {
    "flux-dev": FluxArchitecture(FLUX1_DEV_TRANSFORMER_CONFIG, FLUX1_DEV_T5_CONFIG, FLUX1_DEV_CLIP_CONFIG,
                                 FLUX1_DEV_VAE_CONFIG),
    "tiny": FluxArchitecture(
        transformer={**FLUX1_DEV_TRANSFORMER_CONFIG, "num_layers": 2, "num_single_layers": 2,
                     "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
                     "pooled_projection_dim": 32, "axes_dims_rope": (4, 6, 6)},
        t5={**FLUX1_DEV_T5_CONFIG, "d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4,
            "relative_attention_num_buckets": 8},
        clip={**FLUX1_DEV_CLIP_CONFIG, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
              "num_attention_heads": 4, "projection_dim": 32},
        vae={**FLUX1_DEV_VAE_CONFIG, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1,
             "norm_num_groups": 4, "sample_size": 64},
    ),
}


@dataclass(frozen=True)
class RandomFluxSpec:
    """A random-weight FLUX of a named architecture (`ARCHITECTURES`), built at load time on the target device."""

    architecture: str = "flux-dev"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown random FLUX architecture {self.architecture!r}; "
                             f"choose one of {sorted(ARCHITECTURES)}")

    @property
    def configs(self) -> FluxArchitecture:
        return ARCHITECTURES[self.architecture]


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def random_transformer(config: dict, device: torch.device, dtype: torch.dtype, seed: int = 0
                       ) -> FluxTransformer2DModel:
    """A FLUX transformer of architecture `config` with random weights, allocated directly on `device` in
    `dtype` (FLUX.1-dev's 12B in BF16 never exist in fp32). Linear weights ~ N(0, 0.02), norms 1, biases 0:
    enough for timing, meaningless for images."""
    model = meta_flux_transformer(config).to(dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.02, generator=g)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return model.eval()


def weight_bytes(architecture: FluxArchitecture, dtype: torch.dtype) -> int:
    """Bytes of the four networks' weights in `dtype`, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        networks = [meta_flux_transformer(architecture.transformer), T5EncoderModel(T5Config(**architecture.t5)),
                    CLIPTextModel(CLIPTextConfig(**architecture.clip)), AutoencoderKL(**architecture.vae)]
    return sum(p.numel() for network in networks for p in network.parameters()) * dtype.itemsize


def random_pipeline(transformer_config: dict, device: torch.device, dtype: torch.dtype, tokenizer_dir: Path,
                    seed: int = 0, t5_config: dict = FLUX1_DEV_T5_CONFIG, clip_config: dict = FLUX1_DEV_CLIP_CONFIG,
                    vae_config: dict = FLUX1_DEV_VAE_CONFIG,
                    transformer: FluxTransformer2DModel | None = None, components: str = "all") -> FluxPipeline:
    """A `FluxPipeline` of these architectures (default FLUX.1-dev's) with random weights, built on `device` in
    `dtype`. The tokenizers are the locally built ones (`flux158.models.tokenizers`, written to `tokenizer_dir`):
    CLIP's full BPE, and a small T5 vocabulary whose ids fit any T5 embedding; prompts are padded to the same
    lengths as with the real ones. `transformer` (e.g. a quantized checkpoint) replaces the random one.
    `components`: "all", "text" (the text encoders only) or "image" (transformer and VAE only)."""
    torch.manual_seed(seed)
    tokenizer_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(tokenizer_dir.with_name(f".{tokenizer_dir.name}.lock")):  # ranks and jobs share the folder
        clip_tok = build_clip_tokenizer(tokenizer_dir / "tokenizer", n_merges=48_894)  # the full 49,408 tokens
        t5_tok = build_t5_tokenizer(tokenizer_dir / "tokenizer_2")
    if len(clip_tok) > clip_config["vocab_size"] or len(t5_tok) > t5_config["vocab_size"]:
        raise ValueError("the text encoders' vocabularies must hold the local tokenizers' ids")
    text, image = components in ("all", "text"), components in ("all", "image")
    clip = t5 = vae = None
    with torch.device(device), default_dtype(dtype):  # built in place and type: T5-XXL alone is 4.7B parameters
        # each part from its own seed, so a part equals its counterpart in "all" whatever else is built
        if text:
            torch.manual_seed(seed)
            clip = CLIPTextModel(CLIPTextConfig(**clip_config, bos_token_id=clip_tok.bos_token_id,
                                                eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id))
            torch.manual_seed(seed + 1)
            t5 = T5EncoderModel(T5Config(**t5_config))
        if image:
            torch.manual_seed(seed + 2)
            vae = AutoencoderKL(**vae_config)
    if transformer is None and image:
        transformer = random_transformer(transformer_config, device, dtype, seed)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX1_DEV_SCHEDULER_CONFIG), vae=vae,
                        text_encoder=clip and clip.eval(), tokenizer=clip_tok if text else None,
                        text_encoder_2=t5 and t5.eval(), tokenizer_2=t5_tok if text else None,
                        transformer=transformer if image else None)


def build_random_pipeline(spec: RandomFluxSpec, device: torch.device, dtype: torch.dtype, tokenizer_dir: Path,
                          transformer: FluxTransformer2DModel | None = None, components: str = "all") -> FluxPipeline:
    """The pipeline `spec` names, on `device` in `dtype` (its transformer replaced by `transformer` if given)."""
    arch = spec.configs
    return random_pipeline(arch.transformer, device, dtype, tokenizer_dir, spec.seed, arch.t5, arch.clip, arch.vae,
                           transformer=transformer, components=components)
