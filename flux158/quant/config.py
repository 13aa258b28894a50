"""`TernaryConfig`: what to ternarize and how, validated on construction; plus the options of the data methods."""

from __future__ import annotations

from dataclasses import dataclass

from flux158.kernels.reference import ACT_FORMATS
from flux158.quant.packing import FORMATS
from flux158.quant.ternary import METHODS as DATA_FREE_METHODS

GRANULARITIES = ("tensor", "channel")
CALIBRATED_METHODS = ("gptq", "distill")


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ on the ternary grid {-a, 0, a} per output row (`quant_methods.md` section 6).

    Attributes:
        damp: dampening, as a fraction of the mean Hessian diagonal.
        block_size: columns updated lazily together.
        act_order: quantize columns in order of decreasing Hessian diagonal.
        true_sequential: collect each linear's Hessian after the block's earlier linears are quantized.
        refit_scale: after rounding, refit each row's scale to the codes in the Hessian norm.
        max_rows: calibration records used (None = all).
    """

    damp: float = 0.01
    block_size: int = 128
    act_order: bool = True
    true_sequential: bool = True
    refit_scale: bool = True
    max_rows: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.damp < 10 or self.block_size < 1:
            raise ValueError(f"invalid GPTQ options: damp={self.damp}, block_size={self.block_size}")


@dataclass(frozen=True)
class DistillConfig:
    """Self-distillation from the full-precision teacher (`quant_methods.md` section 5).

    Stage 1, per block in order: latent weights (straight-through ternary), per-row scales and biases trained so
    the block, fed the already-quantized prefix's output, reproduces the teacher block's output. Stage 2: the
    scales and biases of the whole transformer tuned on the cached teacher velocities.

    Learning rates of latent weights and scales are relative to each layer's initial scale, so one setting
    serves models whose weights differ in magnitude (a FLUX.1-dev block linear's scale is ~0.02).

    Attributes:
        block_steps: optimizer steps per block in stage 1 (0 skips stage 1).
        batch_size: calibration rows per step (both stages).
        lr_weight, lr_scale: Adam step sizes relative to the layer's initial scale.
        lr_bias: absolute Adam step size of biases.
        e2e_steps: optimizer steps of stage 2 (0 skips it).
        e2e_lr_scale, e2e_lr_bias: stage-2 step sizes (the scale's relative, as above).
        e2e_lr_weight: stage-2 step size of the latent weights (relative); 0 keeps the codes frozen, as in
            EfficientQAT's E2E-QP. Above 0 every weight gets an fp32 latent copy and Adam state (16 bytes per
            weight: fine for small models, ~190 GB for FLUX.1-dev).
        e2e_lr_unquantized: stage-2 absolute Adam step size of the parameters that stay 16-bit (embedders,
            q/k norms, the output layer: 0.5 % of FLUX.1-dev, 7 % of the toy model), tuned along with the scales so
            they absorb some of the ternary error; the model stays pure ternary with the same storage. 0 = frozen.
            They train in their own dtype: in BF16, updates below its resolution round away.
        e2e_sigma_weights: stage-2 loss weight by noise level, as (upper σ, weight) bands in increasing σ: a row
            at σ takes the weight of the first band whose upper bound is ≥ σ (rows above every band: 1). Empty =
            uniform. `((0.2, 1), (0.8, 2.5), (1.0, 0.5))` stresses the mid-σ band where the toy score is lost
            (quant_next.md D3).
        e2e_guidance: when > 0 and the calibration holds both halves of classifier-free-guided calls, stage 2
            matches the guided velocity v_u + g (v_c - v_u) at this g (CFG-aware distillation, as BitsFusion);
            0 matches each half on its own. FLUX.1-dev is guidance-distilled, so this only matters for CFG models.
        e2e_direction_weight: stage 2 adds this times the relative MSE of the guidance direction v_c - v_u (the
            text-conditioning signal that CFG amplifies; `distill` matches each half to about 2 % on the toy
            world's held-out states and this direction only to about 30 %; 0.1 keeps +0.013 [+0.002, +0.025] more
            of the toy score, three seeds each, docs/toyworld.md). Applies where `e2e_guidance` uses CFG pairs; a
            model without them (guidance-distilled FLUX.1-dev) ignores it with a warning. 0 = off.
        grad_clip: gradient-norm clip.
        ste_clip: latent weights pass gradient while |w / scale| < ste_clip (ParetoQ-style wide band).
        scale_gradient: how a scale learns beside latent weights (both stages). `lsq`: through the rounding's
            straight-through estimate too, Σ (round(u) - u) ∂L/∂w with u = w / scale (LSQ). Once the latent weights
            sit on their codes that sum is small and unrelated to the loss, and Adam rescales it into a drift of the
            scales: stage 2 with `e2e_lr_weight > 0` then raises the loss. `codes`: the gradient the scale has with
            the codes held fixed, Σ q ∂L/∂w, as in stage 2 with frozen codes.
        txt_weight_last: loss weight of the text stream of the last single block (FLUX discards it).
        block_rows: calibration rows stage 1 holds and trains on (None = all). The block-wise pass keeps three
            block-boundary states per row in host memory (85 MB per row for FLUX.1-dev at 1024^2), so the paper's
            8,192 rows need ~700 GB; stage 2 still uses every cached teacher velocity.
        e2e_checkpointing: stage 2 recomputes each block's activations in the backward pass instead of keeping them
            (diffusers' gradient checkpointing): the same gradients for about one more forward pass, and the
            difference between fitting on one 80 GB GPU and not for FLUX.1-dev at 1024^2 (saved activations of 57
            blocks at 8 rows are hundreds of GB). `auto`: on CUDA only.
        attn_loss_weight: stage 1 adds this times the relative MSE between the block's attention outputs and
            those of the full-precision block on the same inputs (attention-targeted distillation, quant_next.md
            D4: ternary attention costs the toy score the most). One extra FP forward per step; 0 = off.
        seed: the order calibration rows are drawn in.
    """

    block_steps: int = 1000
    batch_size: int = 4
    lr_weight: float = 1e-3
    lr_scale: float = 5e-3
    lr_bias: float = 1e-5
    e2e_steps: int = 2000
    e2e_lr_scale: float = 1e-3
    e2e_lr_bias: float = 1e-5
    e2e_lr_weight: float = 0.0
    e2e_lr_unquantized: float = 0.0
    e2e_sigma_weights: tuple[tuple[float, float], ...] = ()
    e2e_guidance: float = 0.0
    e2e_direction_weight: float = 0.0
    grad_clip: float = 0.3
    ste_clip: float = 1.49
    scale_gradient: str = "lsq"
    txt_weight_last: float = 0.0
    attn_loss_weight: float = 0.0
    e2e_checkpointing: bool | str = "auto"
    block_rows: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.block_steps < 0 or self.e2e_steps < 0 or self.batch_size < 1:
            raise ValueError("block_steps and e2e_steps must be >= 0 and batch_size >= 1")
        if self.e2e_lr_unquantized < 0:
            raise ValueError(f"e2e_lr_unquantized must be >= 0, got {self.e2e_lr_unquantized}")
        if self.e2e_direction_weight < 0:
            raise ValueError(f"e2e_direction_weight must be >= 0, got {self.e2e_direction_weight}")
        if self.attn_loss_weight < 0:
            raise ValueError(f"attn_loss_weight must be >= 0, got {self.attn_loss_weight}")
        if self.block_rows is not None and self.block_rows < self.batch_size:
            raise ValueError(f"block_rows must be at least batch_size ({self.batch_size}), got {self.block_rows}")
        if self.e2e_checkpointing not in (True, False, "auto"):
            raise ValueError(f"e2e_checkpointing must be true, false or auto, got {self.e2e_checkpointing!r}")
        if self.scale_gradient not in ("lsq", "codes"):
            raise ValueError(f"scale_gradient must be 'lsq' or 'codes', got {self.scale_gradient!r}")
        if self.ste_clip <= 0.5:
            raise ValueError("ste_clip must exceed 0.5 (the rounding threshold), e.g. 1.49")
        bands = tuple((float(upper), float(weight)) for upper, weight in self.e2e_sigma_weights)
        if any(w < 0 for _, w in bands) or [u for u, _ in bands] != sorted({u for u, _ in bands}):
            raise ValueError(f"e2e_sigma_weights must be (upper σ, weight >= 0) bands with increasing bounds, "
                             f"got {self.e2e_sigma_weights}")
        object.__setattr__(self, "e2e_sigma_weights", bands)  # Hydra hands over lists


@dataclass(frozen=True)
class TernaryConfig:
    """Ternary quantization of FLUX's block linears.

    Attributes:
        method: a data-free rule (`absmean`, `twn`, `l2_optimal`) or a calibrated method (`gptq`, `distill`).
        granularity: one scale per `tensor` or per output `channel` (`gptq` and `distill` need `channel`).
        packing: storage format of the codes, `2bit` (compute) or `trit5` (archival).
        lowrank_rank: rank of an optional BF16 correction `A @ B` of each layer's residual (0 = pure ternary; its
            bytes count in every storage figure).
        act_bits: 16 keeps the activations as they are (W2A16); 8 quantizes them per token at inference (W1.58A8,
            BitNet-style absmax), which changes the numerics and runs on int8/fp8 tensor cores on GPUs.
        act_format: the 8-bit activation type, `int8` (Ampere and later) or `fp8` (e4m3; Ada and Hopper).
        input_scales: one more 16-bit scale per input channel, W ≈ diag(scale) codes diag(in_scale) (OneBit's two
            value vectors, for ternary codes): still pure ternary, `in` more numbers per layer (about 0.15 % of
            FLUX.1-dev's ternary storage), applied to the activations before the kernel. `distill` only (it learns
            them).
        gptq, distill: options of those methods (defaults filled in when the method is chosen).
    """

    method: str = "absmean"
    granularity: str = "tensor"
    packing: str = "2bit"
    lowrank_rank: int = 0
    act_bits: int = 16
    act_format: str = "int8"
    input_scales: bool = False
    gptq: GPTQConfig | None = None
    distill: DistillConfig | None = None

    def __post_init__(self) -> None:
        methods = sorted(DATA_FREE_METHODS) + list(CALIBRATED_METHODS)
        if self.method not in methods:
            raise ValueError(f"unknown method {self.method!r}; choose one of {methods}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}; choose one of {GRANULARITIES}")
        if self.packing not in FORMATS:
            raise ValueError(f"unknown packing {self.packing!r}; choose one of {FORMATS}")
        if self.lowrank_rank < 0:
            raise ValueError(f"lowrank_rank must be >= 0, got {self.lowrank_rank}")
        if self.act_bits not in (8, 16) or self.act_format not in ACT_FORMATS:
            raise ValueError(f"act_bits must be 16 or 8 and act_format one of {ACT_FORMATS}, got "
                             f"{self.act_bits} / {self.act_format!r}")
        if self.method in CALIBRATED_METHODS and self.granularity != "channel":
            raise ValueError(f"{self.method} learns one scale per output channel: use granularity='channel'")
        if self.input_scales and self.method != "distill":
            raise ValueError(f"input_scales are learned by distill; {self.method} fits one scale per row")
        if self.method == "gptq" and self.gptq is None:
            object.__setattr__(self, "gptq", GPTQConfig())
        if self.method == "distill" and self.distill is None:
            object.__setattr__(self, "distill", DistillConfig())
        for name, kind in (("gptq", GPTQConfig), ("distill", DistillConfig)):  # from JSON / plain dicts
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, kind(**value))

    @property
    def per_channel(self) -> bool:
        return self.granularity == "channel"

    @property
    def activations(self) -> str | None:
        """The kernels' activation format: None (16-bit), `int8` or `fp8`."""
        return None if self.act_bits == 16 else self.act_format

    @property
    def needs_calibration(self) -> bool:
        return self.method in CALIBRATED_METHODS
