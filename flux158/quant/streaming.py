"""Data-free quantization of a sharded BF16 transformer checkpoint, one tensor at a time.

FLUX.1-dev's transformer is 23.8 GB in BF16; this never holds more than one source tensor (at most 75 MB in BF16,
plus its float32 working copies) and the packed output of one source shard, so peak RAM stays far below 8 GB.
The result is the same checkpoint `save_quantized` writes for the in-memory path (weights split into
`model-<i>-of-<n>.safetensors`, one per source shard), and `load_quantized` reads either.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from flux158.artifacts import partial_path, remove_stale_partials
from flux158.models.hub import meta_flux_transformer
from flux158.quant.api import block_linear_names
from flux158.quant.checkpoint import FORMAT_VERSION, write_metadata
from flux158.quant.config import TernaryConfig
from flux158.quant.linear import TernaryLinear
from flux158.quant.metrics import LayerStats, layer_stats
from flux158.quant.ternary import ternarize


def source_shards(directory: Path) -> list[Path]:
    """The safetensors files of a diffusers model directory (sharded or single)."""
    directory = Path(directory)
    index = sorted(directory.glob("*.safetensors.index.json"))
    if index:
        files = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        return [directory / f for f in files]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {directory}")
    return files


def quantize_checkpoint_streaming(source: Path, out: Path, config: TernaryConfig, base_model: str | None = None,
                                  revision: str | None = None, progress: bool = True) -> dict[str, LayerStats]:
    """Quantize the block linears of the transformer saved in `source` (a diffusers `transformer/` folder) into
    the quantized checkpoint directory `out`, with a data-free method. Returns per-layer weight statistics."""
    if config.needs_calibration:
        raise ValueError(f"{config.method} needs calibration data; streaming handles the data-free methods only")
    source, out = Path(source), Path(out)
    arch = json.loads((source / "config.json").read_text())
    layers = block_linear_names(meta_flux_transformer(arch))
    weights = {f"{name}.weight": name for name in layers}
    biases = {f"{name}.bias": name for name in layers}

    remove_stale_partials(out)
    tmp = partial_path(out)
    tmp.mkdir(parents=True)
    stats: dict[str, LayerStats] = {}
    shards = source_shards(source)
    for i, shard in enumerate(tqdm(shards, desc="quantize shards", unit="shard", disable=not progress)):
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(shard, framework="pt") as f:
            keys = set(f.keys())
            for key in sorted(keys):
                if key in weights:
                    name = weights[key]
                    w = f.get_tensor(key)
                    bias_key = f"{name}.bias"
                    bias = f.get_tensor(bias_key) if bias_key in keys else None
                    codes, scale = ternarize(w, config.method, config.per_channel)
                    module = TernaryLinear.from_codes(codes, scale, bias, config, weight=w)
                    stats[name] = layer_stats(w, module.dequantize(), codes)
                    tensors.update({f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()})
                elif key in biases:
                    if f"{biases[key]}.weight" not in keys:
                        raise ValueError(f"{shard}: bias {key} is stored apart from its weight; re-shard the model")
                else:
                    tensors[key] = f.get_tensor(key)
        save_file(tensors, tmp / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors",
                  metadata={"format_version": str(FORMAT_VERSION)})
        del tensors
    missing = set(layers) - set(stats)
    if missing:
        raise ValueError(f"{source} lacks the weights of {len(missing)} block linears, e.g. {sorted(missing)[:3]}")
    write_metadata(tmp, arch, config, layers, base_model, revision)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return stats
