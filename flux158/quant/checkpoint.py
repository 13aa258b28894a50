"""Save and load a ternary FLUX transformer: one safetensors file plus two small JSON files.

    <dir>/transformer_config.json   the FluxTransformer2DModel config (architecture)
    <dir>/quantization.json         format version, method, granularity, packing, base model id/revision, layers,
                                    and the sha256 of every weights file
    <dir>/model.safetensors         packed codes, scales and biases of the ternary layers; every other tensor as is
                                    (or model-<i>-of-<n>.safetensors, as the streaming quantizer writes it)

Loading first proves the files: each weights file must have the sha256 that `quantization.json` records (streamed,
so it costs one read of the file), and every floating tensor (scales, biases, low-rank factors, the unquantized
weights) must be finite. Then it builds the model on the meta device and assigns the stored tensors, so no BF16
block weights are ever materialised. The result drops into `FluxPipeline.from_pretrained(base, transformer=...)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flux158.artifacts import partial_path, remove_stale_partials, sha256_file
from flux158.errors import Flux158Error
from flux158.quant.config import TernaryConfig
from flux158.quant.linear import TernaryLinear

FORMAT_VERSION = 2  # 2: group-interleaved `2bit` layout (flux158.kernels.layout); 1 was plainly K-packed
QUANT_FILE, CONFIG_FILE, WEIGHTS_FILE = "quantization.json", "transformer_config.json", "model.safetensors"

log = logging.getLogger(__name__)


class QuantizedCheckpointError(Flux158Error):
    """A quantized checkpoint is missing, truncated, tampered with, or from another format or architecture."""


def is_quantized_checkpoint(directory: Path) -> bool:
    return (Path(directory) / QUANT_FILE).exists()


def weight_files(directory: Path) -> list[Path]:
    """The weights files of a checkpoint: `model.safetensors`, or the streaming quantizer's one file per source
    shard."""
    directory = Path(directory)
    single = directory / WEIGHTS_FILE
    return [single] if single.exists() else sorted(directory.glob("model-*-of-*.safetensors"))


def write_metadata(directory: Path, architecture: dict, config: TernaryConfig, layers: list[str],
                   base_model: str | None, revision: str | None) -> None:
    """The two JSON files of a checkpoint: the transformer config, and the quantization settings with the sha256 of
    each weights file already in `directory`."""
    (directory / CONFIG_FILE).write_text(json.dumps(architecture, indent=2, default=list))
    files = {f.name: sha256_file(f) for f in weight_files(directory)}
    meta = {"format_version": FORMAT_VERSION, **asdict(config), "base_model": base_model, "revision": revision,
            "layers": sorted(layers), "sha256": files}
    (directory / QUANT_FILE).write_text(json.dumps(meta, indent=2))


def save_quantized(transformer: FluxTransformer2DModel, directory: Path, config: TernaryConfig,
                   base_model: str | None = None, revision: str | None = None) -> Path:
    """Write the quantized transformer to `directory` atomically (a temp directory renamed at the end)."""
    layers = sorted(n for n, m in transformer.named_modules() if isinstance(m, TernaryLinear))
    if not layers:
        raise ValueError("the transformer has no TernaryLinear layers: run quantize_ first")
    directory = Path(directory)
    remove_stale_partials(directory)
    tmp = partial_path(directory)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous() for k, v in transformer.state_dict().items()}
    save_file(state, tmp / WEIGHTS_FILE, metadata={"format_version": str(FORMAT_VERSION)})
    write_metadata(tmp, dict(transformer.config), config, layers, base_model, revision)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def load_quantized(directory: Path, device: str | torch.device = "cpu") -> FluxTransformer2DModel:
    """Load a checkpoint written by `save_quantized` (meta-device build, then tensors assigned).

    Raises:
        QuantizedCheckpointError: missing files, unknown format version, unreadable or tampered weights, or tensors
            whose names or shapes do not match the stored architecture.
    """
    directory = Path(directory)
    try:
        meta = json.loads((directory / QUANT_FILE).read_text())
        arch = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise QuantizedCheckpointError(f"{directory} is not a readable quantized checkpoint: {e}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise QuantizedCheckpointError(
            f"{directory} has format version {meta.get('format_version')}, this code reads {FORMAT_VERSION}")
    config = TernaryConfig(meta["method"], meta["granularity"], meta["packing"], meta.get("lowrank_rank", 0),
                           meta.get("act_bits", 16), meta.get("act_format", "int8"),
                           input_scales=meta.get("input_scales", False))
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(arch)
        for name in meta["layers"]:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            old = getattr(parent, child)
            setattr(parent, child, TernaryLinear(old.in_features, old.out_features, old.bias is not None, config,
                                                 old.weight.dtype, "meta"))
    files = weight_files(directory)
    if not files:
        raise QuantizedCheckpointError(f"{directory} has no weights ({WEIGHTS_FILE} or model-*-of-*.safetensors)")
    started = time.perf_counter()
    _verify_hashes(directory, files, meta.get("sha256"))
    hash_seconds = time.perf_counter() - started
    state = {}
    for file in files:
        try:
            state.update(load_file(file, device=str(device)))
        except (OSError, SafetensorError) as e:
            raise QuantizedCheckpointError(f"cannot read {file} (truncated or tampered?): {e}") from None
    expected = model.state_dict()
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    wrong = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise QuantizedCheckpointError(
            f"{directory} does not match its architecture: missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}, wrong shapes {sorted(wrong)[:3]}")
    started = time.perf_counter()
    _verify_finite(directory, state)
    log.info("verified %s: sha256 of %d file(s), %.2f GB, in %.1f s; all floating tensors finite in %.1f s",
             directory, len(files), sum(f.stat().st_size for f in files) / 1e9, hash_seconds,
             time.perf_counter() - started)
    model.load_state_dict(state, assign=True)
    return model.eval()


def checkpoint_fingerprint(directory: Path) -> str:
    """sha256 of the checkpoint's `quantization.json`, which records its weights files' sha256s (loading checks
    them): a content key for everything made with it.

    Raises:
        QuantizedCheckpointError: no readable `quantization.json` in `directory`.
    """
    try:
        return hashlib.sha256((Path(directory) / QUANT_FILE).read_bytes()).hexdigest()
    except OSError as e:
        raise QuantizedCheckpointError(
            f"quant.checkpoint={directory} is not a quantized checkpoint (no readable {QUANT_FILE}: "
            f"{e.strerror or e})") from None


def verify_quantized(directory: Path) -> None:
    """Check that `directory` is a whole checkpoint whose weights files have the sha256 its `quantization.json`
    records (one streamed read of the weights; nothing is loaded).

    Raises:
        QuantizedCheckpointError: a missing or unreadable `quantization.json`, missing or changed weights files.
    """
    directory = Path(directory)
    try:
        meta = json.loads((directory / QUANT_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise QuantizedCheckpointError(f"{directory} is not a readable quantized checkpoint: {e}") from None
    files = weight_files(directory)
    if not files or meta.get("sha256") is None:
        raise QuantizedCheckpointError(f"{directory} has no weights files, or records no sha256 of them")
    _verify_hashes(directory, files, meta["sha256"])


def _verify_hashes(directory: Path, files: list[Path], recorded: dict[str, str] | None) -> None:
    if recorded is None:  # checkpoints written before the hashes were recorded
        log.warning("%s records no sha256 of its weights (written by an older flux158): its files cannot be "
                    "verified; quantize again to get a verifiable checkpoint", directory)
        return
    if sorted(recorded) != sorted(f.name for f in files):
        raise QuantizedCheckpointError(f"{directory} holds weights files {sorted(f.name for f in files)}, but "
                                       f"{QUANT_FILE} records {sorted(recorded)}")
    for file in files:
        actual = sha256_file(file)
        if actual != recorded[file.name]:
            raise QuantizedCheckpointError(f"{file} has sha256 {actual[:16]}..., {QUANT_FILE} records "
                                           f"{recorded[file.name][:16]}...: the file is corrupt or was changed")


def _verify_finite(directory: Path, state: dict[str, torch.Tensor]) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise QuantizedCheckpointError(f"{directory} holds NaN or inf in {len(bad)} tensor(s), e.g. "
                                       f"{', '.join(sorted(bad)[:3])}: the checkpoint is unusable")
