"""The toy-world model family: FLUX's own transformer in pixel space, a small trainable T5 encoder, a word tokenizer.

Pixel space rather than a trained VAE: the scenes are flat colors, a VAE would be a second model to train and to
quantize around, and pixel-space errors are exactly what the detector measures. Tokens are `patch x patch` pixel
patches; the default 4 is FLUX's 2x2 packing applied after a parameter-free 2x pixel-unshuffle (standing in for a
/2 "VAE"), so a 32 x 32 scene is 64 tokens of 48 channels. Against 2x2 pixel patches (256 tokens) that cuts a
training step on a 2-core CPU about 3x, which buys the steps that make shapes crisp within the ~20-minute budget.
The transformer is `FluxTransformer2DModel`, so its block linears
are the same modules the quantization code replaces on FLUX.1-dev.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FluxTransformer2DModel
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

from flux158.toyworld.scenes import NUMBERS, PALETTE, PLURAL, RELATIONS, SHAPES

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


@dataclass(frozen=True)
class ToyWorldSpec:
    """Architecture of a toy-world model (everything that changes the shapes of its weights)."""

    image_size: int = 32
    patch: int = 4
    num_layers: int = 2
    num_single_layers: int = 2
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    text_dim: int = 64
    text_layers: int = 2
    max_tokens: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes_dims_rope", tuple(self.axes_dims_rope))
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError("sum(axes_dims_rope) must equal attention_head_dim")
        if self.patch % 2 or self.image_size % self.patch:
            raise ValueError("patch must be even and divide image_size")


def vocabulary() -> list[str]:
    """Every word a toy-world caption can use, after the special tokens, in a fixed order."""
    words = ["a", "an", "photo", "of", "and", *NUMBERS.values(), *SHAPES, *PLURAL.values(), *PALETTE]
    for rel in RELATIONS:
        words += rel.split()
    return list(SPECIAL_TOKENS) + list(dict.fromkeys(words))


def build_tokenizer(max_tokens: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the closed toy vocabulary (`</s>` appended, padded to `max_tokens`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_tokens)


def build_text_encoder(spec: ToyWorldSpec, vocab_size: int) -> T5EncoderModel:
    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=spec.text_dim, d_kv=spec.text_dim // 4, d_ff=2 * spec.text_dim,
        num_layers=spec.text_layers, num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
        is_encoder_decoder=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.0,
    ))


def build_transformer(spec: ToyWorldSpec) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1, in_channels=3 * spec.patch**2, num_layers=spec.num_layers,
        num_single_layers=spec.num_single_layers,
        attention_head_dim=spec.attention_head_dim, num_attention_heads=spec.num_attention_heads,
        joint_attention_dim=spec.text_dim, pooled_projection_dim=spec.text_dim, guidance_embeds=False,
        axes_dims_rope=spec.axes_dims_rope,
    )


def pack(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C * p * p), channel-major within a token like FLUX's `_pack_latents`."""
    b, c, h, w = images.shape
    x = images.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpack(tokens: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """Inverse of `pack`."""
    b, _, d = tokens.shape
    c = d // (patch * patch)
    x = tokens.view(b, height // patch, width // patch, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


def image_ids(height: int, width: int, patch: int) -> torch.Tensor:
    """FLUX's positional ids of the packed image tokens: (H/p * W/p, 3) with (0, row, col)."""
    ids = torch.zeros(height // patch, width // patch, 3)
    ids[..., 1] = torch.arange(height // patch)[:, None]
    ids[..., 2] = torch.arange(width // patch)[None, :]
    return ids.reshape(-1, 3)
