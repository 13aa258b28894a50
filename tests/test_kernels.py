"""The Triton kernels against independent oracles: under TRITON_INTERPRET=1 on CPU (small odd shapes), and on a
GPU (marker `gpu`) at FLUX.1-dev shapes and under torch.compile.

Tolerances: int8 activations make the accumulation exact (int32 in the kernel, float64 in the oracle), so before the
scale the result is bitwise; 16-bit paths may differ from the float64 oracle by fp32 accumulation order (~1e-6
relative) plus the final rounding to the output dtype (one ulp: the interpreter's bf16 downcast truncates).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flux158.kernels import GROUP, kernel_available, pack_ternary, packed_rows, ternary_linear, unpack_ternary
from flux158.kernels.reference import quantize_activations_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _problem(m: int, k: int, n: int, per_channel: bool, bias: bool, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n if per_channel else 1, 1, generator=g) + 0.5
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    x = torch.randn(m, k, generator=g).to(dtype)
    to = {"device": DEVICE}
    return x.to(**to), codes.to(**to), scale.to(**to), (b.to(**to) if bias else None)


def _oracle(x, codes, scale, bias):
    y = x.double() @ (codes.double() * scale.double()).T
    return y + bias.double() if bias is not None else y


def _ulp(t: torch.Tensor) -> torch.Tensor:
    """The spacing of the output dtype at |t| (one unit in the last place)."""
    eps = torch.finfo(t.dtype).eps
    return (t.double().abs().clamp_min(1.0) * eps)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), k=st.integers(1, 300), seed=st.integers(0, 99))
def test_layout_round_trips_and_pads_k_to_groups(n, k, seed):
    codes = torch.randint(-1, 2, (n, k), generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    packed = pack_ternary(codes)
    assert packed.shape == (packed_rows(k), n) and packed.shape[0] * 4 % GROUP == 0
    assert torch.equal(unpack_ternary(packed, k), codes)


def test_layout_interleaves_contiguous_k_slabs():
    k = 2 * GROUP
    codes = torch.zeros(1, k, dtype=torch.int8)
    codes[0, GROUP + 3 * 32 + 5] = 1  # group 1, slab 3, row 5 -> byte row 32 + 5, bits 6..7 hold 2
    codes[0, 7] = -1  # group 0, slab 0, row 7 -> byte row 7, bits 0..1 hold 0
    packed = pack_ternary(codes)[:, 0].tolist()
    zeros = 0b01010101  # four zero codes, each stored as 1
    assert packed[32 + 5] == (zeros & ~(3 << 6)) | (2 << 6)
    assert packed[7] == zeros & ~3
    assert all(v == zeros for i, v in enumerate(packed) if i not in (7, 37))


def test_int8_activation_quantization_matches_reference_exactly():
    from flux158.kernels import ops

    x = torch.randn(5, 300, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    q, s = ops.quantize_rows(x, 1)
    qr, sr = quantize_activations_ref(x, "int8")
    assert torch.equal(s, sr.reshape(-1))
    v = x * (127.0 / x.abs().amax(-1, keepdim=True))
    ties = ((v.abs() % 1) - 0.5).abs() < 1e-4  # GPU arithmetic may round an exact .5 the other way
    assert torch.equal(q[~ties], qr[~ties]) and (q.int() - qr.int()).abs().max() <= 1
    assert q.abs().max() == 127  # each row's largest entry maps to 127


def test_fp8_activation_quantization_is_exact_on_representable_rows():
    from flux158.kernels import ops

    grid = torch.tensor([0.0, 0.5, 1.0, 1.75, 3.0, 26.0, 120.0, 240.0, 448.0])  # e4m3 values; max 448 -> scale 1
    x = (grid[torch.randint(0, len(grid), (4, 200), generator=torch.Generator().manual_seed(0))]
         * torch.tensor([1, -1]).repeat(100)).to(DEVICE)
    x[:, 0] = 448.0
    q, s = ops.quantize_rows(x, 2)
    assert torch.equal(s, torch.ones(4, device=DEVICE))
    assert torch.equal(q.float(), x)


@pytest.mark.parametrize("m", [1, 5, 16, 17, 40])
@pytest.mark.parametrize("k,n", [(200, 70), (128, 33)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_w2a16_matches_float64_oracle(m, k, n, dtype):
    x, codes, scale, bias = _problem(m, k, n, per_channel=True, bias=True, dtype=dtype)
    y = ternary_linear(x, pack_ternary(codes), scale, bias, k, backend="triton")
    assert y.dtype == dtype and y.shape == (m, n)
    expected = _oracle(x, codes, scale, bias)
    assert ((y.double() - expected).abs() <= 2 * _ulp(y) + 1e-5 * expected.abs().max()).all()


@pytest.mark.parametrize("m", [1, 16, 17, 40])
@pytest.mark.parametrize("per_channel", [True, False])
def test_w158a8_int8_is_exact_before_the_scale(m, per_channel):
    k, n = 300, 45
    x, codes, scale, bias = _problem(m, k, n, per_channel, bias=False, dtype=torch.float32)
    packed = pack_ternary(codes)
    y = ternary_linear(x, packed, torch.ones_like(scale), None, k, act="int8", backend="triton")
    q, s = quantize_activations_ref(x, "int8")
    exact = ((q.double() @ codes.double().T) * s.double()).float()  # one rounding, as in the kernel's epilogue
    assert torch.equal(y, exact)
    # and with scale and bias, against the reference's epilogue order
    bias = torch.randn(n, device=DEVICE)
    y = ternary_linear(x, packed, scale, bias, k, act="int8", backend="triton")
    r = ternary_linear(x, packed, scale, bias, k, act="int8", backend="reference")
    assert ((y - r).abs() <= 2 * _ulp(r)).all()  # only the epilogue rounds (a GPU may fuse it into FMAs)


@pytest.mark.skipif(CUDA, reason="on CUDA the autotuner chooses the GEMM form")
@pytest.mark.parametrize("act", [None, "int8", "fp8"])
def test_swapped_gemm_form_computes_the_same(monkeypatch, act):
    from flux158.kernels import ops

    x, codes, scale, bias = _problem(40, 300, 70, True, True, torch.float16)
    packed = pack_ternary(codes)
    plain = ternary_linear(x, packed, scale, bias, 300, act, backend="triton")
    monkeypatch.setattr(ops, "SWAP_AB_INTERPRETED", True)
    swapped = ternary_linear(x, packed, scale, bias, 300, act, backend="triton")
    assert ((swapped.double() - plain.double()).abs() <= _ulp(plain)).all()


@pytest.mark.parametrize("m", [1, 24])
def test_w158a8_fp8_matches_exact_products(m):
    k, n = 200, 40
    _, codes, scale, bias = _problem(m, k, n, True, True, torch.float32)
    grid = torch.tensor([0.0, 0.25, 1.0, 1.5, 12.0, 96.0, 448.0])
    x = grid[torch.randint(0, len(grid), (m, k), generator=torch.Generator().manual_seed(1))].to(DEVICE)
    x[:, 1] = 448.0  # every row's scale is 1, so the activations need no rounding
    y = ternary_linear(x, pack_ternary(codes), scale, bias, k, act="fp8", backend="triton")
    expected = _oracle(x, codes, scale, bias)
    assert ((y.double() - expected).abs() <= 2 * _ulp(y)).all()


@pytest.mark.parametrize("m", [4, 40])
def test_unpack_backend_matches_the_reference(m):
    x, codes, scale, bias = _problem(m, 256, 48, True, True, torch.bfloat16)
    packed = pack_ternary(codes)
    # 16-bit: the scale is folded into BF16 weights (one rounding of each channel's scale, <= 2^-8 relative)
    y = ternary_linear(x, packed, scale, bias, 256, backend="unpack")
    assert ((y.double() - _oracle(x, codes, scale, bias)).abs() <= 0.01 * _oracle(x, codes, scale, None).abs()
            + 2 * _ulp(y)).all()
    # int8: exact accumulation and the reference's epilogue (M <= 16 falls back to the fused GEMV)
    y = ternary_linear(x, packed, scale, bias, 256, act="int8", backend="unpack")
    assert ((y.double() - ternary_linear(x, packed, scale, bias, 256, act="int8", backend="reference").double()
             ).abs() <= _ulp(y)).all()
    # fp8 on activations that need no rounding: only the bf16 output rounds
    grid = torch.tensor([0.0, 0.25, 1.0, 1.5, 12.0, 96.0, 448.0])
    x8 = grid[torch.randint(0, len(grid), (m, 256), generator=torch.Generator().manual_seed(2))]
    x8[:, 1] = 448.0
    x8 = x8.to(DEVICE, torch.bfloat16)
    y = ternary_linear(x8, packed, scale, bias, 256, act="fp8", backend="unpack")
    assert ((y.double() - _oracle(x8, codes, scale, bias)).abs() <= 2 * _ulp(y)).all()


def test_3d_input_and_bias_dtype_follow_x():
    x, codes, scale, bias = _problem(6, 130, 20, True, True, torch.float16)
    x3 = x.reshape(2, 3, 130)
    y = ternary_linear(x3, pack_ternary(codes), scale, bias.float(), 130, backend="triton")
    assert y.shape == (2, 3, 20) and y.dtype == torch.float16
    assert torch.equal(y.reshape(6, 20), ternary_linear(x, pack_ternary(codes), scale, bias.float(), 130,
                                                        backend="triton"))


@pytest.mark.skipif(CUDA, reason="checks the CPU fallback")
def test_auto_dispatch_falls_back_to_reference_on_cpu(monkeypatch):
    x, codes, scale, bias = _problem(4, 64, 8, True, True, torch.bfloat16)
    assert not kernel_available(x) and not kernel_available(x, "int8")
    from flux158.kernels import ops

    def boom(*args, **kwargs):
        raise AssertionError("the Triton op must not run on CPU in auto mode")

    monkeypatch.setattr(ops, "ternary_mm", boom)
    monkeypatch.setattr(torch.ops.flux158, "ternary_mm", boom, raising=False)
    y = ternary_linear(x, pack_ternary(codes), scale, bias, 64)
    assert torch.equal(y, ternary_linear(x, pack_ternary(codes), scale, bias, 64, backend="reference"))


def test_bad_arguments_are_clear_errors():
    x, codes, scale, bias = _problem(2, 64, 8, True, False, torch.float32)
    with pytest.raises(ValueError, match="activation format"):
        ternary_linear(x, pack_ternary(codes), scale, bias, 64, act="int4")
    with pytest.raises(ValueError, match="backend"):
        ternary_linear(x, pack_ternary(codes), scale, bias, 64, backend="cuda")


@pytest.mark.skipif(CUDA, reason="checks CPU tensors")
def test_kernel_backends_on_cpu_need_the_interpreter(monkeypatch):
    x, codes, scale, bias = _problem(2, 64, 8, True, False, torch.float32)
    monkeypatch.delenv("TRITON_INTERPRET")
    for backend in ("triton", "unpack"):
        with pytest.raises(ValueError, match="needs a CUDA tensor"):
            ternary_linear(x, pack_ternary(codes), scale, bias, 64, act="int8", backend=backend)


def test_ternary_linear_module_same_with_and_without_kernel():
    from flux158.quant import TernaryConfig, TernaryLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(200, 48).to(DEVICE, torch.bfloat16)
    x = torch.randn(3, 7, 200, dtype=torch.bfloat16, device=DEVICE)
    for act_bits in (16, 8):
        module = TernaryLinear.from_linear(linear, TernaryConfig("l2_optimal", "channel", act_bits=act_bits))
        module.backend = "reference"
        reference = module(x)
        module.backend = "triton"
        fused = module(x)
        # the same math; only the fp32 accumulation order and the bf16 output rounding may differ
        assert ((fused.double() - reference.double()).abs() <= 2 * _ulp(reference)).all()
        if act_bits == 8:  # and it is not the 16-bit result
            module.config = TernaryConfig("l2_optimal", "channel")
            assert not torch.equal(module(x), fused)


FLUX_SHAPES = [(3072, 3072), (15360, 3072), (3072, 18432)]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("k,n", FLUX_SHAPES)
@pytest.mark.parametrize("m", [1, 16, 333, 4608])
@pytest.mark.parametrize("act", [None, "int8", "fp8"])
@pytest.mark.parametrize("backend", ["triton", "unpack"])  # `auto` picks one of them per shape (backend_table)
def test_flux_shapes_on_gpu(k, n, m, act, backend):
    if not kernel_available(torch.empty(1, device="cuda", dtype=torch.bfloat16), act):
        pytest.skip(f"{act} needs a newer GPU")
    x, codes, scale, bias = _problem(m, k, n, True, True, torch.bfloat16)
    packed = pack_ternary(codes)
    y = ternary_linear(x, packed, scale, bias, k, act=act, backend=backend)
    r = ternary_linear(x, packed, scale, bias, k, act=act, backend="reference")
    err = (y.float() - r.float()).norm() / r.float().norm()
    assert err < (1e-2 if act == "fp8" else 4e-3), err  # bf16 output rounding; fp8 ties may round differently


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["triton", "unpack", "auto"])
@pytest.mark.parametrize("act_bits,act_format", [(8, "int8"), (16, "int8"), (8, "fp8")])
def test_torch_compile_sees_the_op(backend, act_bits, act_format):
    from flux158.quant import TernaryConfig, TernaryLinear

    if not kernel_available(torch.empty(1, device="cuda", dtype=torch.bfloat16), act_format if act_bits == 8 else None):
        pytest.skip(f"{act_format} needs a newer GPU")
    linear = torch.nn.Linear(3072, 3072).cuda().to(torch.bfloat16)
    module = TernaryLinear.from_linear(linear, TernaryConfig("absmean", "channel", act_bits=act_bits,
                                                             act_format=act_format))
    module.backend = backend
    x = torch.randn(2, 300, 3072, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        eager = module(x)
        torch._dynamo.reset()
        compiled = torch.compile(module, fullgraph=True)(x)
    if backend == "triton":  # the same kernels, launched from the graph
        assert torch.equal(eager, compiled)
    else:  # the unpack path's float epilogue is fused by Inductor, which may contract it differently
        assert ((eager.double() - compiled.double()).abs() <= _ulp(eager)).all()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_overhead_split_sees_device_time():
    from flux158.kernels.bench.overhead import device_us, host_us

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    big = device_us(lambda: a @ a, calls=5)  # 137 GFLOP: tens of µs at least, on any GPU
    assert big > 20 and host_us(lambda: a @ a, calls=5) < big  # a big GEMM is not launch-bound
    assert device_us(lambda: a[:1, :8] + 1, calls=5) < big
