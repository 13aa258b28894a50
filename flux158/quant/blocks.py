"""Block-by-block execution of a `FluxTransformer2DModel`, for methods that quantize one block at a time.

Both FLUX block types take `(hidden_states, encoder_hidden_states, temb, image_rotary_emb)` and return
`(encoder_hidden_states, hidden_states)`, so a `BlockState` flows through the 19 double and then the 38 single
blocks unchanged in kind. The preamble (embedders, RoPE) is taken from the model's own forward, stopped just
before its first block, so no diffusers internals are re-implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FluxTransformer2DModel
from torch import nn


@dataclass
class BlockState:
    """What flows between FLUX blocks for a batch of rows."""

    hidden: torch.Tensor  # (B, image tokens, dim)
    encoder: torch.Tensor  # (B, text tokens, dim)
    temb: torch.Tensor  # (B, dim); fixed by the (unquantized) embedders
    rotary: tuple[torch.Tensor, torch.Tensor]  # shared by all rows

    def to(self, device: torch.device | str) -> BlockState:
        return BlockState(self.hidden.to(device), self.encoder.to(device), self.temb.to(device),
                          tuple(r.to(device) for r in self.rotary))

    def rows(self, index: torch.Tensor) -> BlockState:
        return BlockState(self.hidden[index], self.encoder[index], self.temb[index], self.rotary)

    @staticmethod
    def cat(states: list[BlockState]) -> BlockState:
        return BlockState(torch.cat([s.hidden for s in states]), torch.cat([s.encoder for s in states]),
                          torch.cat([s.temb for s in states]), states[0].rotary)


class _Stop(Exception):
    pass


def flux_blocks(transformer: FluxTransformer2DModel) -> list[nn.Module]:
    """The 19 double blocks, then the 38 single blocks (fewer on small models), in execution order."""
    return list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)


def embed(transformer: FluxTransformer2DModel, kwargs: dict[str, torch.Tensor]) -> BlockState:
    """The input of the first block for transformer call `kwargs` (the model's preamble, nothing else)."""
    captured: dict = {}

    def hook(module, args, block_kwargs):
        captured.update(block_kwargs)
        raise _Stop

    handle = flux_blocks(transformer)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        transformer(**kwargs, return_dict=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return BlockState(captured["hidden_states"], captured["encoder_hidden_states"], captured["temb"],
                      tuple(captured["image_rotary_emb"]))


def run_block(block: nn.Module, state: BlockState) -> BlockState:
    encoder, hidden = block(hidden_states=state.hidden, encoder_hidden_states=state.encoder, temb=state.temb,
                            image_rotary_emb=state.rotary)
    return BlockState(hidden, encoder, state.temb, state.rotary)


def head(transformer: FluxTransformer2DModel, state: BlockState) -> torch.Tensor:
    """The transformer output (velocity) from the state after the last block."""
    return transformer.proj_out(transformer.norm_out(state.hidden, state.temb))


def forward_from(transformer: FluxTransformer2DModel, state: BlockState, start: int = 0) -> torch.Tensor:
    """Run blocks `start..` and the head: equals the model's forward when `state` is block `start`'s input."""
    for block in flux_blocks(transformer)[start:]:
        state = run_block(block, state)
    return head(transformer, state)
