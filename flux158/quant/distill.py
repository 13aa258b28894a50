"""`distill`: self-supervised ternary distillation from the full-precision teacher (`quant_methods.md` section 5).

Stage 0: exact L2-optimal per-row ternary fit. Stage 1 (per block, in order): latent weights with a straight-through
ternary quantizer, per-row scales and biases, trained so that the block fed the quantized prefix's output
reproduces the teacher block's output on teacher-trajectory states. Stage 2: scales and biases of the whole
ternary transformer tuned end to end on the cached teacher velocities. The result stays pure ternary.

Under `accelerate launch`/`torchrun` every process runs the same block-by-block schedule on its own rows and the
gradients are averaged (data parallel); the processes stay bit-identical, so any of them may save the result.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from flux158.artifacts import atomic_write
from flux158.quant.blocks import BlockState, run_block
from flux158.quant.blockwise import BlockData, linear_names, replace_module
from flux158.quant.calibration import CalibrationSet
from flux158.quant.config import TernaryConfig
from flux158.quant.linear import TernaryLinear
from flux158.quant.ste import STETernaryLinear

log = logging.getLogger(__name__)


def _cosine(step: int, total: int, floor: float = 1 / 20) -> float:
    """Cosine decay from 1 to `floor` (EfficientQAT decays to lr / 20)."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))


def _world() -> tuple[int, int]:
    """(rank, world size) of the running process group (accelerate/torchrun), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _average_gradients(params: list[nn.Parameter]) -> None:
    """Data parallelism: every rank draws its own rows, then applies the mean gradient, so the ranks stay
    identical (same init, same update) and the effective batch is `batch_size * world size`."""
    _, world = _world()
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world)


def _update(optimizer: torch.optim.Optimizer, base_lrs: list[float], step: int, total: int, loss: torch.Tensor,
            params: list[nn.Parameter], students: dict[str, STETernaryLinear], grad_clip: float) -> None:
    """One step of either stage: cosine learning rate, backward, gradients averaged over ranks and clipped, update,
    scales kept positive."""
    for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = lr * _cosine(step, total)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _average_gradients(params)
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    with torch.no_grad():
        for m in students.values():
            m.scale.clamp_(min=1e-8)
            if m.in_scale is not None:
                m.in_scale.clamp_(min=1e-8)


def _row_sampler(total: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        for chunk in torch.randperm(total, generator=generator).split(batch_size):
            if len(chunk) == batch_size or total < batch_size:
                yield chunk


def _rel_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred.float() - target.float()).square().sum() / target.float().square().sum().clamp(min=1e-30)


def sigma_weights(sigmas: torch.Tensor, bands: tuple[tuple[float, float], ...]) -> torch.Tensor:
    """Per-row loss weights: the weight of the first (upper σ, weight) band with upper ≥ σ; 1 above every band."""
    weights = torch.ones_like(sigmas, dtype=torch.float32)
    for upper, weight in reversed(bands):  # the lowest matching band is written last
        weights[sigmas <= upper] = weight
    return weights


def _weighted_rel_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_i w_i |pred_i - target_i|² / Σ_i |target_i|² (rows along dim 0): the relative MSE with rows reweighted."""
    err = (pred.float() - target.float()).square().flatten(1).sum(1)
    return (weights.to(err.device) * err).sum() / target.float().square().sum().clamp(min=1e-30)


def block_loss(pred: BlockState, target: BlockState, txt_weight: float) -> torch.Tensor:
    """Relative MSE of the image stream plus `txt_weight` times that of the text stream."""
    loss = _rel_mse(pred.hidden, target.hidden)
    return loss + txt_weight * _rel_mse(pred.encoder, target.encoder) if txt_weight else loss


@contextlib.contextmanager
def _captured(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The tensors `module` returns (one, or each of a tuple) while the context is open."""
    outputs: list[torch.Tensor] = []

    def hook(_module, _args, output):
        outputs.extend(output if isinstance(output, tuple) else (output,))

    handle = module.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


def attention_loss(student: nn.Module, teacher: nn.Module, state: BlockState) -> tuple[BlockState, torch.Tensor]:
    """Run `student` on `state`; return its output and the relative MSE of its attention outputs (image and text
    streams, summed) against those of the full-precision `teacher` block on the same inputs."""
    with _captured(student.attn) as mine:
        pred = run_block(student, state)
    with torch.no_grad(), _captured(teacher.attn) as theirs:
        run_block(teacher, state)
    return pred, sum(_rel_mse(a, b) for a, b in zip(mine, theirs, strict=True))


def _param_groups(modules: dict[str, STETernaryLinear], lr_weight: float, lr_scale: float,
                  lr_bias: float) -> list[dict]:
    groups = []
    for m in modules.values():
        ref = m.scale.detach().mean().item()  # step sizes relative to the layer's weight scale
        if m.weight is not None:
            groups.append({"params": [m.weight], "lr": lr_weight * ref})
        groups.append({"params": [m.scale], "lr": lr_scale * ref})
        if m.in_scale is not None:  # relative to its own magnitude too (mean 1 at the stage-0 fit)
            groups.append({"params": [m.in_scale], "lr": lr_scale * m.in_scale.detach().mean().item()})
        if m.bias is not None:
            groups.append({"params": [m.bias], "lr": lr_bias})
    return groups


def distill_block(config: TernaryConfig, device: torch.device | str, num_blocks: int,
                  history: list[dict] | None = None):
    """A `quantize_block` for `quantize_blockwise`: stage 0 + stage 1 on one block.

    Returns (and appends to `history`, if given) per block the loss at the stage-0 init and after training, on all
    rows, the block's kind (double or single), its training steps and their seconds.
    """
    opts, device = config.distill, torch.device(device)

    def quantize_block(index: int, block: nn.Module, data: BlockData) -> dict:
        txt_weight = opts.txt_weight_last if index == num_blocks - 1 else 1.0
        names = linear_names(block)
        originals = {n: block.get_submodule(n) for n in names}
        teacher = copy.deepcopy(block).requires_grad_(False) if opts.attn_loss_weight and opts.block_steps else None
        students = {n: STETernaryLinear.from_linear(originals[n], opts.ste_clip, config.input_scales,
                                                    opts.scale_gradient).to(device) for n in names}
        for n, m in students.items():
            replace_module(block, n, m)
        # rows stay where the driver keeps them (host memory for FLUX at 1024^2); each step moves its batch
        inputs, targets = BlockState.cat(data.inputs_q), BlockState.cat(data.targets)
        total = inputs.hidden.shape[0]

        def loss_on(i: torch.Tensor) -> torch.Tensor:
            return block_loss(run_block(block, inputs.rows(i).to(device)), targets.rows(i).to(device), txt_weight)

        def training_loss(i: torch.Tensor) -> torch.Tensor:
            if teacher is None:
                return loss_on(i)
            pred, attn = attention_loss(block, teacher, inputs.rows(i).to(device))
            return block_loss(pred, targets.rows(i).to(device), txt_weight) + opts.attn_loss_weight * attn

        def full_loss() -> float:
            with torch.no_grad():
                return sum(loss_on(i).item() * len(i) for i in torch.arange(total).split(64)) / total

        before = full_loss()
        started = time.perf_counter()
        if opts.block_steps:
            trainable = {id(p) for m in students.values() for p in m.parameters()}
            frozen = [p for p in block.parameters() if id(p) not in trainable]
            for p in frozen:
                p.requires_grad_(False)
            groups = _param_groups(students, opts.lr_weight, opts.lr_scale, opts.lr_bias)
            optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
            base, params = [g["lr"] for g in groups], [p for g in groups for p in g["params"]]
            rank, _ = _world()
            seed = opts.seed + index + 1_000_003 * rank
            rows = _row_sampler(total, opts.batch_size, torch.Generator().manual_seed(seed))
            for step in range(opts.block_steps):
                _update(optimizer, base, step, opts.block_steps, training_loss(next(rows)), params, students,
                        opts.grad_clip)
            for p in frozen:
                p.requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - started
        after = full_loss()
        kind = "single" if isinstance(block, FluxSingleTransformerBlock) else "double"
        record = {"block": index, "kind": kind, "loss_init": before, "loss_final": after,
                  "steps": opts.block_steps, "train_seconds": train_seconds}
        if history is not None:
            history.append(record)
        log.debug("distill block %d: relative block-output error %.4g -> %.4g", index, before, after)
        for n, m in students.items():
            original = originals[n]
            bias_dtype = original.bias.dtype if original.bias is not None else None
            replace_module(block, n, m.to_ternary(config, original.weight, bias_dtype))
        return record

    return quantize_block


def _guided(v: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance of a batch laid out [unconditional; conditional]."""
    uncond, cond = v.chunk(2)
    return uncond + scale * (cond - uncond)


def _direction(v: torch.Tensor) -> torch.Tensor:
    """The guidance direction v_cond - v_uncond of a batch laid out [unconditional; conditional]."""
    uncond, cond = v.chunk(2)
    return cond - uncond


def _loss(pred: torch.Tensor, target: torch.Tensor, row_weights: torch.Tensor | None, rows: list[int]
          ) -> torch.Tensor:
    return _rel_mse(pred, target) if row_weights is None else _weighted_rel_mse(pred, target, row_weights[rows])


def _save_e2e(path: Path, step: int, losses: list[float], params: list[nn.Parameter],
              optimizer: torch.optim.Optimizer, seconds: float = 0.0) -> None:
    tensors = {"step": torch.tensor([step]), "losses": torch.tensor(losses, dtype=torch.float64),
               "seconds": torch.tensor([seconds], dtype=torch.float64)}
    for i, p in enumerate(params):
        tensors[f"param.{i}"] = p.detach().contiguous()
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"adam.{i}.{key}"] = value.detach().reshape(value.shape).contiguous()
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def _load_e2e(path: Path, params: list[nn.Parameter],
              optimizer: torch.optim.Optimizer) -> tuple[int, list[float], float]:
    tensors = load_file(path)
    if sum(k.startswith("param.") for k in tensors) != len(params):
        raise ValueError(f"{path} was written for another model or configuration; delete it to start over")
    for i, p in enumerate(params):
        p.data.copy_(tensors[f"param.{i}"])
        state = {k.split(".")[-1]: v.to(p.device) for k, v in tensors.items() if k.startswith(f"adam.{i}.")}
        if state:
            optimizer.state[p] = state
    seconds = float(tensors["seconds"]) if "seconds" in tensors else 0.0  # older checkpoints lack it
    return int(tensors["step"]), tensors["losses"].tolist(), seconds


def _unquantized_parameters(transformer: nn.Module, students: dict[str, STETernaryLinear]) -> list[nn.Parameter]:
    """The transformer's parameters outside its ternary layers (embedders, q/k norms, output layer), made
    trainable."""
    own = {id(p) for m in students.values() for p in m.parameters()}
    params = [p for p in transformer.parameters() if id(p) not in own]
    for p in params:
        p.requires_grad_(True)
    return params


def tune_end_to_end(transformer: FluxTransformer2DModel, calib: CalibrationSet, config: TernaryConfig,
                    device: torch.device | str = "cpu", progress: bool = True, checkpoint_dir: Path | None = None,
                    checkpoint_every: int = 200, timing: dict[str, float] | None = None) -> list[float]:
    """Stage 2: train every ternary layer's scale and bias (and, with `e2e_lr_weight > 0`, its latent weight
    through the straight-through quantizer; with `e2e_lr_unquantized > 0`, the parameters that stay 16-bit) on the
    relative MSE to the cached teacher velocity (guided, for CFG models), plus `e2e_direction_weight` times that of
    the guidance direction.

    With `checkpoint_dir`, the trained tensors and Adam state are saved every `checkpoint_every` steps and a rerun
    continues from the last save exactly (the same rows in the same order). Returns the losses, one per step;
    `timing["seconds"]` (if given) receives the seconds of all steps, over every run that made them.
    """
    opts, device = config.distill, torch.device(device)
    pairs = calib.guidance_pairs() if opts.e2e_guidance > 0 else []
    direction_weight = opts.e2e_direction_weight if pairs else 0.0
    if opts.e2e_direction_weight > 0 and not pairs:
        log.warning("e2e_direction_weight=%g has no effect: the calibration holds no classifier-free-guided pairs "
                    "or e2e_guidance is 0 (FLUX.1-dev is guidance-distilled)", opts.e2e_direction_weight)
    dtype = next(transformer.parameters()).dtype
    names = [n for n, m in transformer.named_modules() if isinstance(m, TernaryLinear)]
    requires = {p: p.requires_grad for p in transformer.parameters()}
    transformer.requires_grad_(False)
    students: dict[str, STETernaryLinear] = {}
    bias_dtypes: dict[str, torch.dtype | None] = {}
    for n in names:
        module = transformer.get_submodule(n)
        bias_dtypes[n] = module.bias.dtype if module.bias is not None else None
        students[n] = STETernaryLinear.from_ternary(module, opts.ste_clip, opts.e2e_lr_weight > 0,
                                                    opts.scale_gradient).to(device)
        replace_module(transformer, n, students[n])
    groups = _param_groups(students, opts.e2e_lr_weight, opts.e2e_lr_scale, opts.e2e_lr_bias)
    if opts.e2e_lr_unquantized > 0:
        groups.append({"params": _unquantized_parameters(transformer, students), "lr": opts.e2e_lr_unquantized})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    base = [g["lr"] for g in groups]
    rank, _ = _world()
    rows = _row_sampler(len(pairs) or len(calib), opts.batch_size,
                        torch.Generator().manual_seed(opts.seed + 1_000_003 * rank))
    params = [p for g in groups for p in g["params"]]
    row_weights = sigma_weights(calib.sigmas(), opts.e2e_sigma_weights) if opts.e2e_sigma_weights else None
    saved = Path(checkpoint_dir) / "e2e.safetensors" if checkpoint_dir is not None else None
    checkpointing = opts.e2e_checkpointing is True or (opts.e2e_checkpointing == "auto" and device.type == "cuda")
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    resumed = saved is not None and saved.exists()
    start, losses, before = _load_e2e(saved, params, optimizer) if resumed else (0, [], 0.0)
    began = time.perf_counter()
    for _ in range(start):  # replay the row order up to the resumed step
        next(rows)
    if start:
        log.info("distill end-to-end: resuming at step %d of %d from %s", start, opts.e2e_steps, saved)
    try:
        for step in tqdm(range(start, opts.e2e_steps), desc="distill end-to-end", unit="step",
                         initial=start, total=opts.e2e_steps, disable=not progress):
            picked = next(rows).tolist()
            if pairs:  # both halves of each guided call, unconditional first
                records = [pairs[i][1] for i in picked]
                kwargs, halves = calib.batch([pairs[i][0] for i in picked] + records, device, dtype)
                out = transformer(**kwargs, return_dict=False)[0]
                pred, target = _guided(out, opts.e2e_guidance), _guided(halves, opts.e2e_guidance)
            else:
                records = picked
                kwargs, target = calib.batch(picked, device, dtype)
                pred = transformer(**kwargs, return_dict=False)[0]
            loss = _loss(pred, target, row_weights, records)
            if direction_weight > 0:
                loss = loss + direction_weight * _loss(_direction(out), _direction(halves), row_weights, records)
            _update(optimizer, base, step, opts.e2e_steps, loss, params, students, opts.grad_clip)
            losses.append(loss.item())
            if saved is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == opts.e2e_steps):
                _save_e2e(saved, step + 1, losses, params, optimizer, before + time.perf_counter() - began)
    finally:
        if timing is not None:
            timing["seconds"] = before + time.perf_counter() - began
        if checkpointing:
            transformer.disable_gradient_checkpointing()
        for n, m in students.items():
            replace_module(transformer, n, m.to_ternary(config, None, bias_dtypes[n]))
        for p, flag in requires.items():
            p.requires_grad_(flag)
    return losses
