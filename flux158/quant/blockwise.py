"""The block-by-block driver shared by `gptq` and `distill`, resumable at block granularity.

For block b it holds, for every calibration row, the input the block sees in the model quantized so far
(`inputs_q`, the quantized prefix) and in the full-precision model (`inputs_fp`), and the full-precision block's
output (`targets`). A method replaces the block's linears with `TernaryLinear`s in place; then
`inputs_q <- block_q(inputs_q)` and `inputs_fp <- targets`. After each block its ternary weights are saved, so a
killed run recomputes the prefix from the saved blocks (a forward pass) instead of quantizing it again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from flux158.artifacts import atomic_write
from flux158.quant.blocks import BlockState, embed, flux_blocks, run_block
from flux158.quant.calibration import CalibrationSet
from flux158.quant.config import TernaryConfig
from flux158.quant.linear import TernaryLinear
from flux158.quant.metrics import LayerStats, layer_stats

log = logging.getLogger(__name__)


@dataclass
class BlockData:
    """Calibration rows at one block boundary, as batches (kept on `storage` device, computed on `device`)."""

    inputs_q: list[BlockState]
    inputs_fp: list[BlockState]
    targets: list[BlockState]


def linear_names(block: nn.Module) -> list[str]:
    return [n for n, m in block.named_modules() if isinstance(m, nn.Linear)]


def replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def ternary_shell(block: nn.Module, config: TernaryConfig) -> None:
    """Swap the block's linears for empty `TernaryLinear`s of the same shapes (to load saved weights into)."""
    for name in linear_names(block):
        old = block.get_submodule(name)
        replace_module(block, name, TernaryLinear(old.in_features, old.out_features, old.bias is not None, config,
                                                  old.weight.dtype, old.weight.device))


@torch.no_grad()
def _map(block: nn.Module, states: list[BlockState], device: torch.device, storage: torch.device) -> list[BlockState]:
    return [run_block(block, s.to(device)).to(storage) for s in states]


@torch.no_grad()
def embed_calibration(transformer: FluxTransformer2DModel, calib: CalibrationSet, batch_size: int,
                      device: torch.device, storage: torch.device) -> list[BlockState]:
    dtype = next(transformer.parameters()).dtype
    return [embed(transformer, kwargs).to(storage) for kwargs, _ in calib.batches(batch_size, device, dtype)]


QuantizeBlock = Callable[[int, nn.Module, BlockData], dict | None]


def held_bytes_per_row(calib: CalibrationSet, transformer: FluxTransformer2DModel) -> int:
    """Host bytes `quantize_blockwise` holds per calibration row: three block-boundary states (the quantized
    prefix's inputs, the full-precision inputs, the targets), each the image and text streams and the conditioning
    vector at the transformer's width and dtype. 85 MB for FLUX.1-dev at 1024^2 with 512 text tokens."""
    record = calib.records[0]
    tokens = record["hidden_states"].shape[-2] + record["encoder_hidden_states"].shape[-2] + 1
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    return 3 * tokens * width * next(transformer.parameters()).element_size()


def quantize_blockwise(transformer: FluxTransformer2DModel, calib: CalibrationSet, config: TernaryConfig,
                       quantize_block: QuantizeBlock, *, batch_size: int = 8, device: torch.device | str = "cpu",
                       storage: torch.device | str = "cpu", checkpoint_dir: Path | None = None,
                       progress: bool = True, prefix: str = "",
                       records: list[dict] | None = None) -> dict[str, LayerStats]:
    """Run `quantize_block` on every FLUX block in order; returns per-layer weight statistics.

    Args:
        quantize_block: replaces the block's linears with `TernaryLinear`s, given the block's calibration data, and
            returns the block's record (or None).
        checkpoint_dir: where finished blocks are saved, with their records, and picked up again on resume (None: no
            resume).
        prefix: the transformer's module path inside the stats' names (e.g. "" for the transformer itself).
        records: receives each block's record with its wall `seconds`, also for blocks reloaded on resume (the
            record and seconds of the run that made them).
    """
    device, storage = torch.device(device), torch.device(storage)
    stats: dict[str, LayerStats] = {}
    inputs_q = embed_calibration(transformer, calib, batch_size, device, storage)
    inputs_fp = inputs_q
    blocks = flux_blocks(transformer)
    n_double = len(transformer.transformer_blocks)
    for b, block in enumerate(tqdm(blocks, desc=f"{config.method} blocks", unit="block", disable=not progress)):
        block_name = f"transformer_blocks.{b}" if b < n_double else f"single_transformer_blocks.{b - n_double}"
        started = time.perf_counter()
        originals = {n: block.get_submodule(n).weight.detach().clone() for n in linear_names(block)}
        targets = _map(block, inputs_fp, device, storage)
        saved = Path(checkpoint_dir) / f"block-{b:03d}.safetensors" if checkpoint_dir else None
        if saved is not None and saved.exists():
            ternary_shell(block, config)
            block.load_state_dict(load_file(saved, device=str(device)))
            with safe_open(saved, "pt") as f:
                record = json.loads((f.metadata() or {}).get("record", "{}"))
            log.info("%s: block %d loaded from %s", config.method, b, saved)
        else:
            record = dict(quantize_block(b, block, BlockData(inputs_q, inputs_fp, targets)) or {})
            record["seconds"] = time.perf_counter() - started
            if saved is not None:
                state = {k: v.detach().contiguous() for k, v in block.state_dict().items()}
                meta = {"record": json.dumps(record)}
                # every data-parallel rank writes the same block; each through its own temp file
                atomic_write(saved, lambda tmp, state=state, meta=meta: save_file(state, tmp, metadata=meta))
        if records is not None and record:
            records.append(record)
        for name, w in originals.items():
            module = block.get_submodule(name)
            codes = module.codes()
            stats[f"{prefix}{block_name}.{name}"] = layer_stats(w, module.dequantize(), codes)
        inputs_q = _map(block, inputs_q, device, storage)
        inputs_fp = targets
    return stats
