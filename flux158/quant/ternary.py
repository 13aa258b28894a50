"""Data-free ternarization rules: W (out x in) -> codes in {-1, 0, +1} (int8) and a scale (per tensor or per row).

The dequantized weight is `scale * codes`, with `scale` of shape (1, 1) for per-tensor or (out, 1) per row.
"""

from __future__ import annotations

import torch

EPS = 1e-5


def _rows(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """View the weight as the rows that share one scale: (out, in) per channel, (1, out*in) per tensor."""
    return w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)


def absmean(w: torch.Tensor, per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet b1.58: gamma = mean|W|, codes = RoundClip(W / (gamma + eps), -1, 1), scale = gamma."""
    rows = _rows(w.float(), per_channel)
    gamma = rows.abs().mean(dim=1, keepdim=True)
    codes = (rows / (gamma + EPS)).round().clamp(-1, 1)
    return codes.reshape(w.shape).to(torch.int8), gamma


def twn(w: torch.Tensor, per_channel: bool = True, delta_factor: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary weight networks: delta = 0.7 mean|W|, codes = sign(W) [|W| > delta], alpha = mean of |W| > delta."""
    rows = _rows(w.float(), per_channel)
    mag = rows.abs()
    delta = delta_factor * mag.mean(dim=1, keepdim=True)
    support = mag > delta
    alpha = (mag * support).sum(dim=1, keepdim=True) / support.sum(dim=1, keepdim=True).clamp(min=1)
    codes = torch.sign(rows) * support
    return codes.reshape(w.shape).to(torch.int8), alpha


def l2_optimal(w: torch.Tensor, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact minimiser of ||w - alpha t||^2 per row: support = top-k by |w| with k = argmax P_k^2 / k."""
    rows = _rows(w.float(), per_channel)
    mag = rows.abs()
    sorted_mag, _ = mag.sort(dim=1, descending=True)
    prefix = sorted_mag.cumsum(dim=1)
    k = torch.arange(1, rows.shape[1] + 1, device=rows.device, dtype=rows.dtype)
    best = (prefix.square() / k).argmax(dim=1, keepdim=True)  # index k* - 1
    alpha = prefix.gather(1, best) / (best + 1).to(rows.dtype)
    threshold = sorted_mag.gather(1, best)  # the k*-th largest |w|: keep everything at least this large
    codes = torch.sign(rows) * (mag >= threshold) * (alpha > 0)
    return codes.reshape(w.shape).to(torch.int8), alpha


def l2_optimal_two_sided(w: torch.Tensor, iters: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes t, row scales a (out, 1) and input-channel scales b (in,) with w ≈ a t b (OneBit's two value vectors,
    for ternary codes): alternately the exact per-row fit of w / b, then a and b refitted by least squares.

    Starts from b = 1 and keeps the best iterate, so the error is never above `l2_optimal(w)`'s. b has mean 1.
    """
    w = w.float()
    col = torch.ones(w.shape[1], device=w.device)
    best: tuple[float, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    for _ in range(iters):
        codes, row = l2_optimal(w / col, per_channel=True)
        t, row = codes.float(), row.flatten()
        for _ in range(4):  # each least-squares update lowers ||w - a t b||^2 for these codes
            den = (t.square() * col.square()).sum(1)
            row = torch.where(den > 0, (w * t * col).sum(1) / den.clamp(min=1e-30), row)
            den = (t.square() * row[:, None].square()).sum(0)
            col = torch.where(den > 0, (w * t * row[:, None]).sum(0) / den.clamp(min=1e-30), col)
            col = col.clamp(min=1e-3 * col.mean())  # positive: a sign flip belongs to the codes
            mean = col.mean()
            col, row = col / mean, row * mean
        err = (w - row[:, None] * t * col).square().sum().item()
        if best is None or err < best[0]:
            best = (err, codes, row[:, None].clone(), col.clone())
    return best[1], best[2], best[3]


METHODS = {
    "absmean": absmean,
    "twn": twn,
    "l2_optimal": l2_optimal,
}


def ternarize(w: torch.Tensor, method: str, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch to a data-free rule; returns (int8 codes shaped like `w`, float32 scale (rows, 1))."""
    if method not in METHODS:
        raise ValueError(f"unknown data-free ternary method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method](w, per_channel=per_channel)


def weighted_l2_scale(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Per-row alpha minimising sum_i h_i (w_i - alpha t_i)^2 over ternary t (`quant_methods.md` 7.4).

    The optimal support is still a top-k set by |w|; with P_k = sum of the top-k h|w| and H_k = sum of their h,
    k* = argmax P_k^2 / H_k and alpha = P_k* / H_k*. `w` is (out, in), `h` (in,) non-negative.
    """
    mag = w.float().abs()
    order = mag.argsort(dim=1, descending=True)
    hs = h.float().clamp(min=0)[order]
    p = (mag.gather(1, order) * hs).cumsum(dim=1)
    hk = hs.cumsum(dim=1).clamp(min=1e-30)
    best = (p.square() / hk).argmax(dim=1, keepdim=True)
    return p.gather(1, best) / hk.gather(1, best)
