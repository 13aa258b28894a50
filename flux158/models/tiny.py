"""A tiny, randomly initialised FLUX pipeline with the real diffusers classes, built offline from a seed.

It has FLUX.1-dev's layout (16 latent channels, 2x2 patch packing, guidance embedding, /8 VAE) at toy widths,
so every code path that touches `FluxPipeline` can run on a CPU in milliseconds.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from flux158.artifacts import config_hash
from flux158.models.hub import FLUX1_DEV_SCHEDULER_CONFIG
from flux158.models.tokenizers import build_clip_tokenizer, build_t5_tokenizer


@dataclass(frozen=True)
class TinyFluxSpec:
    """Shape and seed of the tiny FLUX. Everything that changes the weights is here, so it keys the cache."""

    seed: int = 0
    num_layers: int = 2
    num_single_layers: int = 2
    num_attention_heads: int = 2
    attention_head_dim: int = 16
    axes_dims_rope: tuple[int, int, int] = (4, 6, 6)
    text_dim: int = 32
    clip_merges: int = 2000

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes_dims_rope", tuple(self.axes_dims_rope))
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(f"sum(axes_dims_rope)={sum(self.axes_dims_rope)} must equal attention_head_dim")
        if min(self.num_layers, self.num_single_layers) < 1:
            raise ValueError("the tiny FLUX needs at least one block of each kind")


def build_tiny_pipeline(spec: TinyFluxSpec, tokenizer_dir: Path) -> FluxPipeline:
    """Build the tiny pipeline in float32 on the CPU; `tokenizer_dir` receives the tokenizer files."""
    torch.manual_seed(spec.seed)
    clip_tok = build_clip_tokenizer(tokenizer_dir / "tokenizer", n_merges=spec.clip_merges)
    t5_tok = build_t5_tokenizer(tokenizer_dir / "tokenizer_2")
    d = spec.text_dim
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=d, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=d, bos_token_id=clip_tok.bos_token_id,
        eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id,
    ))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=d, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=spec.num_layers, num_single_layers=spec.num_single_layers,
        attention_head_dim=spec.attention_head_dim, num_attention_heads=spec.num_attention_heads,
        joint_attention_dim=d, pooled_projection_dim=d, guidance_embeds=True, axes_dims_rope=spec.axes_dims_rope,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        norm_num_groups=4, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=0.3611, shift_factor=0.1159,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX1_DEV_SCHEDULER_CONFIG)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok,
                        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)


def ensure_tiny_pipeline(spec: TinyFluxSpec, cache_dir: Path) -> Path:
    """Return a saved tiny pipeline under `cache_dir`, building it once (atomically) if it is not there yet."""
    spec_dict = asdict(spec)
    target = cache_dir / f"tiny-flux-{config_hash(spec_dict)}"
    if (target / "model_index.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".building-") as tmp:
        staging = Path(tmp) / "pipe"
        pipe = build_tiny_pipeline(spec, staging)
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / "tiny_spec.json").write_text(json.dumps(spec_dict, indent=2))
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its copy is identical
            if not (target / "model_index.json").exists():
                raise
    return target
