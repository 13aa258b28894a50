"""GPTQ on the ternary grid: per-column rounding to {-a_r, 0, a_r} with second-order error feedback.

Per layer, H = X^T X / n from the layer's inputs in the quantized prefix. Before rounding, each row's scale is the
diag(H)-weighted L2-optimal ternary scale; after rounding it is refit in the H norm to the final codes,
a_r = t_r^T H w_r / t_r^T H t_r (`quant_methods.md` section 6). The column loop is GPTQ's (Frantar et al. 2022):
lazy block updates, the upper Cholesky factor of H^-1, optional act-order.
"""

from __future__ import annotations

import time

import torch
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock
from torch import nn

from flux158.quant.blocks import run_block
from flux158.quant.blockwise import BlockData, linear_names, replace_module
from flux158.quant.config import GPTQConfig, TernaryConfig
from flux158.quant.linear import TernaryLinear
from flux158.quant.ternary import weighted_l2_scale


def gptq_ternary(weight: torch.Tensor, hessian: torch.Tensor, options: GPTQConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes (out, in), float32 scale (out, 1)) minimising ||(W - a T) X|| approximately, for H = X^T X."""
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h_original, w_original = h.clone(), w.clone()
    scale = weighted_l2_scale(w, torch.diag(h)).clamp(min=1e-12)  # (out, 1)

    perm = torch.argsort(torch.diag(h), descending=True) if options.act_order else torch.arange(w.shape[1])
    w, h = w[:, perm], h[perm][:, perm]
    h += options.damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    codes = torch.zeros_like(w)
    n = w.shape[1]
    for i1 in range(0, n, options.block_size):
        i2 = min(i1 + options.block_size, n)
        w1, err1, hinv1 = w[:, i1:i2].clone(), torch.zeros_like(w[:, i1:i2]), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            t = (col / scale[:, 0]).round().clamp(-1, 1)
            codes[:, i1 + i] = t
            e = (col - t * scale[:, 0]) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]

    codes = codes[:, torch.argsort(perm)]
    if options.refit_scale:
        th = codes @ h_original
        num, den = (th * w_original).sum(1, keepdim=True), (th * codes).sum(1, keepdim=True)
        scale = torch.where(den > 0, num / den.clamp(min=1e-30), scale).clamp(min=1e-12)
    return codes.to(torch.int8), scale


def _execution_groups(block: nn.Module, data: BlockData) -> list[list[str]]:
    """The block's linears in call order, grouped where consecutive linears read the very same input tensor."""
    order: list[tuple[str, int]] = []
    handles = [block.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: order.append((n, args[0].data_ptr()))) for n in linear_names(block)]
    try:
        with torch.no_grad():
            run_block(block, data.inputs_q[0].rows(torch.arange(1)))
    finally:
        for handle in handles:
            handle.remove()
    groups: list[list[str]] = []
    last_ptr = None
    for name, ptr in order:
        if any(name in g for g in groups):
            continue
        if groups and ptr == last_ptr:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_ptr = ptr
    return groups


@torch.no_grad()
def collect_hessians(block: nn.Module, names: list[str], data: BlockData,
                     device: torch.device) -> dict[str, torch.Tensor]:
    """H = X^T X / n for each linear in `names`, X = its inputs (all tokens) over the quantized-prefix rows."""
    sums = {n: None for n in names}
    counts = dict.fromkeys(names, 0)

    def hook(module, args, name):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        sums[name] = x.T @ x if sums[name] is None else sums[name] + x.T @ x
        counts[name] += x.shape[0]

    handles = [block.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in names]
    try:
        for state in data.inputs_q:
            run_block(block, state.to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {n: sums[n] / counts[n] for n in names}


def gptq_block(config: TernaryConfig, device: torch.device | str, history: list[dict] | None = None):
    """A `quantize_block` for `quantize_blockwise` applying `gptq_ternary` to each linear of the block.

    Returns (and appends to `history`, if given) per block its kind (double or single) and the seconds of its GPTQ
    solves (the part of the cost that does not grow with the calibration rows)."""
    options, device = config.gptq, torch.device(device)

    def quantize_block(index: int, block: nn.Module, data: BlockData) -> dict:
        groups = _execution_groups(block, data) if options.true_sequential else [linear_names(block)]
        solve_seconds = 0.0
        for group in groups:
            hessians = collect_hessians(block, group, data, device)
            started = time.perf_counter()
            for name in group:
                linear = block.get_submodule(name)
                codes, scale = gptq_ternary(linear.weight, hessians[name], options)
                replace_module(block, name, TernaryLinear.from_codes(codes, scale, linear.bias, config,
                                                                     weight=linear.weight))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            solve_seconds += time.perf_counter() - started
        kind = "single" if isinstance(block, FluxSingleTransformerBlock) else "double"
        record = {"block": index, "kind": kind, "solve_seconds": solve_seconds}
        if history is not None:
            history.append(record)
        return record

    return quantize_block
