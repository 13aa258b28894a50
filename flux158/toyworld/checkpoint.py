"""Training checkpoints as safetensors only: model, EMA and AdamW state, plus a JSON of the loop state."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from flux158.errors import Flux158Error


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {f"{idx}.{key}": value for idx, per_param in state["state"].items()
               for key, value in per_param.items()}
    return {k: v.contiguous() for k, v in tensors.items()}, {"param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: Path, step: int, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, extra: dict[str, Any], keep: int = 2) -> Path:
    """Write `<directory>/step-<step>` atomically (a `.partial` dir renamed when complete); keep the last `keep`."""
    final = directory / f"step-{step:07d}"
    tmp = directory / f"step-{step:07d}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # save_model handles tied weights (T5's embeddings)
    save_model(ema, str(tmp / "ema.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta, **extra}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in directory.glob("step-*") if not p.name.endswith(".partial"))[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    done = sorted(p for p in directory.glob("step-*") if not p.name.endswith(".partial"))
    return done[-1] if done else None


def load_checkpoint(path: Path, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, EMA and optimizer in place; return the JSON state (step, ...)."""
    try:
        state = json.loads((path / "state.json").read_text())
        load_model(model, str(path / "model.safetensors"))
        load_model(ema, str(path / "ema.safetensors"))
        optimizer.load_state_dict(_unflatten_optimizer(load_file(path / "optimizer.safetensors"), state["optimizer"]))
    except (OSError, KeyError, RuntimeError, ValueError, SafetensorError, json.JSONDecodeError) as e:
        raise Flux158Error(f"checkpoint {path} is corrupt or from another model ({e}); delete it to restart") from None
    return state
