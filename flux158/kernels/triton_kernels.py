"""Triton kernels over the group-interleaved `2bit` layout (see `flux158.kernels.layout`).

A_MODE selects the activation operand: 0 = 16-bit float (W2A16), 1 = int8 (W1.58A8, int32 accumulation, exact),
2 = fp8 e4m3 (W1.58A8, fp32 accumulation; passed as its uint8 bits, so that masked loads can fill exact zeros).
UPCAST (interpreter only) computes float dots in fp32, because the Triton interpreter multiplies raw bf16 bit
patterns in `tl.dot` (triton-lang/triton#11584).
"""

import triton
import triton.language as tl

GROUP = tl.constexpr(128)  # K per packed group: 32 byte rows, four 32-long K slabs
SLAB = tl.constexpr(32)


@triton.jit
def _slab_dot(acc, a, p, s: tl.constexpr, A_MODE: tl.constexpr, UPCAST: tl.constexpr, SWAP: tl.constexpr = False):
    """acc (BM, BN) += a (BM, 32) @ the codes of slab s of the byte tile p (32, BN); with SWAP,
    acc (BN, BM) += codes (BN, 32) @ a (32, BM), the codes being the left (register) operand."""
    c = ((p >> (2 * s)) & 3).to(tl.int8) - 1
    if A_MODE == 1:
        w, x = c, a
    elif UPCAST:
        w, x = c.to(tl.float32), a.to(tl.float32)
    else:
        w, x = c.to(tl.float32).to(a.dtype), a
    if SWAP:
        acc = tl.dot(w, x, acc, out_dtype=acc.dtype)
    else:
        acc = tl.dot(x, w, acc, out_dtype=acc.dtype)
    return acc


@triton.jit
def _epilogue(acc, offs_m, offs_n, mask_m, mask_n, w_scale_ptr, a_scale_ptr, bias_ptr,
              A_MODE: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr):
    """fp32 result: acc * activation scale[m] * weight scale[n] (+ bias[n]), in the reference's order."""
    y = acc.to(tl.float32)
    if A_MODE != 0:
        y = y * tl.load(a_scale_ptr + offs_m, mask=mask_m, other=0.0)[:, None]
    if PER_CHANNEL:
        y = y * tl.load(w_scale_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    else:
        y = y * tl.load(w_scale_ptr)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    return y


@triton.jit
def ternary_gemm_kernel(a_ptr, p_ptr, w_scale_ptr, a_scale_ptr, bias_ptr, c_ptr, M, N, K, P_ROWS,
                        stride_am, stride_ak, stride_pk, stride_pn, stride_cm, stride_cn,
                        A_MODE: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr,
                        UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SWAP_AB: tl.constexpr = False):
    """C (M, N) = A (M, K) @ ternary (K, N), fused unpack and epilogue; BLOCK_K is a multiple of 128.

    SWAP_AB computes C^T = W @ A^T instead: the codes unpacked in registers become the left operand, which Hopper's
    wgmma can take from registers, while the activations stay the shared-memory operand (kernels.md section 1.2)."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * num_n  # GROUP_M row tiles share each weight tile while it is in L2
    first_m = (pid // in_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % size_m
    pid_n = (pid % in_group) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, SLAB)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc_type = tl.int32 if A_MODE == 1 else tl.float32
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=acc_type)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_type)
    for k0 in range(0, K, BLOCK_K):
        for g in tl.static_range(BLOCK_K // GROUP):
            kg = k0 + g * GROUP
            rows = kg // 4 + offs_j
            if SWAP_AB:
                p = tl.load(p_ptr + offs_n[:, None] * stride_pn + rows[None, :] * stride_pk,
                            mask=mask_n[:, None] & (rows[None, :] < P_ROWS), other=0)  # (BN, 32)
            else:
                p = tl.load(p_ptr + rows[:, None] * stride_pk + offs_n[None, :] * stride_pn,
                            mask=(rows[:, None] < P_ROWS) & mask_n[None, :], other=0)  # (32, BN)
            for s in tl.static_range(4):
                offs_k = kg + s * SLAB + offs_j
                if SWAP_AB:
                    a = tl.load(a_ptr + offs_k[:, None] * stride_ak + offs_m[None, :] * stride_am,
                                mask=(offs_k[:, None] < K) & mask_m[None, :], other=0)  # (32, BM)
                else:
                    a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
                                mask=mask_m[:, None] & (offs_k[None, :] < K), other=0)  # (BM, 32)
                if A_MODE == 2:
                    a = a.to(tl.float8e4nv, bitcast=True)
                acc = _slab_dot(acc, a, p, s, A_MODE, UPCAST, SWAP_AB)
    if SWAP_AB:
        acc = tl.trans(acc)
    y = _epilogue(acc, offs_m, offs_n, mask_m, mask_n, w_scale_ptr, a_scale_ptr, bias_ptr, A_MODE, PER_CHANNEL,
                  HAS_BIAS)
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn, y.to(c_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def ternary_gemv_kernel(a_ptr, p_ptr, part_ptr, M, N, K, P_ROWS, GROUPS_PER_SPLIT,
                        stride_am, stride_ak, stride_pk, stride_pn, stride_ps, stride_pm, stride_pn_out,
                        A_MODE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Split-K for M <= 16: program (n, s) writes the raw fp32 partial sum of K-split s; `splitk_epilogue_kernel`
    adds the splits and applies the epilogue (deterministic, no atomics). 8-bit activations are upcast to fp16,
    which holds every int8 and e4m3 value exactly, so the partial sums stay exact integers for int8."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, SLAB)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    g0 = pid_s * GROUPS_PER_SPLIT
    for g in range(g0, g0 + GROUPS_PER_SPLIT):
        kg = g * GROUP
        rows = kg // 4 + offs_j
        p = tl.load(p_ptr + rows[:, None] * stride_pk + offs_n[None, :] * stride_pn,
                    mask=(rows[:, None] < P_ROWS) & mask_n[None, :], other=0, eviction_policy="evict_first")
        for s in tl.static_range(4):
            offs_k = kg + s * SLAB + offs_j
            a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
                        mask=mask_m[:, None] & (offs_k[None, :] < K), other=0)
            if A_MODE == 2:
                a = a.to(tl.float8e4nv, bitcast=True)
            if A_MODE != 0:
                a = a.to(tl.float16)
            acc = _slab_dot(acc, a, p, s, 0, UPCAST)
    tl.store(part_ptr + pid_s * stride_ps + offs_m[:, None] * stride_pm + offs_n[None, :] * stride_pn_out, acc,
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def splitk_epilogue_kernel(part_ptr, w_scale_ptr, a_scale_ptr, bias_ptr, c_ptr, M, N, SPLITS,
                           stride_ps, stride_pm, stride_pn, stride_cm, stride_cn,
                           A_MODE: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr,
                           BLOCK_N: tl.constexpr):
    """Row m, columns block n: the sum of the split-K partials (fp32, or int32 products), then the shared
    epilogue."""
    offs_m = tl.program_id(0) + tl.arange(0, 1)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    ptrs = part_ptr + offs_m[:, None] * stride_pm + offs_n[None, :] * stride_pn
    acc = tl.zeros((1, BLOCK_N), dtype=tl.float32)
    for s in range(SPLITS):
        acc += tl.load(ptrs + s * stride_ps, mask=mask_m[:, None] & mask_n[None, :], other=0).to(tl.float32)
    y = _epilogue(acc, offs_m, offs_n, mask_m, mask_n, w_scale_ptr, a_scale_ptr, bias_ptr, A_MODE, PER_CHANNEL,
                  HAS_BIAS)
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn, y.to(c_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def quantize_rows_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm, A_MODE: tl.constexpr, BLOCK: tl.constexpr):
    """Per-token absmax quantization of one row to int8 (A_MODE 1) or fp8 e4m3 (A_MODE 2), as the reference."""
    row = tl.program_id(0)
    x_row = x_ptr + row * stride_xm
    peak = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        peak = tl.maximum(peak, tl.abs(tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)))
    amax = tl.maximum(tl.max(peak, axis=0), 1e-12)
    top = 127.0 if A_MODE == 1 else 448.0
    inv = tl.math.div_rn(top, amax)  # correctly rounded, like the reference's tensor division
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        v = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32) * inv
        if A_MODE == 1:
            q = tl.where(v >= 0, tl.floor(v + 0.5), -tl.floor(0.5 - v))
            q = tl.minimum(tl.maximum(q, -127.0), 127.0).to(tl.int8)
        else:
            q = tl.minimum(tl.maximum(v, -448.0), 448.0).to(q_ptr.dtype.element_ty)
        tl.store(q_ptr + row * stride_qm + offs, q, mask=offs < K)
    tl.store(s_ptr + row, amax / top)


@triton.jit
def unpack_kernel(p_ptr, w_scale_ptr, w_ptr, N, K, P_ROWS, stride_pk, stride_pn, stride_wn, stride_wk,
                  SCALED: tl.constexpr, PER_CHANNEL: tl.constexpr, BLOCK_N: tl.constexpr):
    """Unpack one 128-group x BLOCK_N tile into a dense (N, K) weight: the codes in int8/bf16/fp8, or with SCALED
    the 16-bit weights scale[n] * code (the scale rounded once to the output dtype)."""
    pid_g = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_j = tl.arange(0, SLAB)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = pid_g * SLAB + offs_j
    p = tl.load(p_ptr + rows[:, None] * stride_pk + offs_n[None, :] * stride_pn,
                mask=(rows[:, None] < P_ROWS) & mask_n[None, :], other=0)
    if SCALED:
        if PER_CHANNEL:
            scale = tl.load(w_scale_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
        else:
            scale = tl.load(w_scale_ptr)
    for s in tl.static_range(4):
        c = (((p >> (2 * s)) & 3).to(tl.int8) - 1).to(tl.float32)
        if SCALED:
            c = c * scale
        offs_k = pid_g * GROUP + s * SLAB + offs_j
        tl.store(w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk, c.to(w_ptr.dtype.element_ty),
                 mask=(offs_k[:, None] < K) & mask_n[None, :])
