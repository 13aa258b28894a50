"""Ternary rules against independent implementations, exact packing round trips, and `quantize_` on FLUX blocks."""

import copy
import itertools

import pytest
import torch
from diffusers import FluxTransformer2DModel
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from flux158.quant import TernaryConfig, TernaryLinear, block_linear_names, quantize_
from flux158.quant.packing import pack, unpack
from flux158.quant.ternary import absmean, l2_optimal, twn


def _absmean_loops(w, per_channel):
    rows = [list(r) for r in w.tolist()]
    if not per_channel:
        rows = [[x for r in rows for x in r]]
    out_codes, scales = [], []
    for r in rows:
        gamma = sum(abs(x) for x in r) / len(r)
        out_codes.append([max(-1.0, min(1.0, round(x / (gamma + 1e-5)))) for x in r])
        scales.append(gamma)
    codes = torch.tensor(out_codes).reshape(w.shape)
    return codes, torch.tensor(scales, dtype=torch.float32)[:, None]


@pytest.mark.parametrize("per_channel", [False, True])
def test_absmean_matches_bitnet_formula(per_channel):
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    codes, scale = absmean(w, per_channel)
    ref_codes, ref_scale = _absmean_loops(w, per_channel)
    assert torch.equal(codes.float(), ref_codes) and torch.allclose(scale, ref_scale)


def test_twn_matches_its_definition():
    w = torch.randn(5, 9, generator=torch.Generator().manual_seed(1))
    codes, alpha = twn(w)
    for r in range(5):
        row = w[r].tolist()
        delta = 0.7 * sum(abs(x) for x in row) / len(row)
        kept = [abs(x) for x in row if abs(x) > delta]
        assert codes[r].tolist() == [(x > 0) - (x < 0) if abs(x) > delta else 0 for x in row]
        assert alpha[r, 0].item() == pytest.approx(sum(kept) / len(kept), rel=1e-6)


def test_l2_optimal_matches_brute_force():
    w = torch.randn(4, 7, generator=torch.Generator().manual_seed(2))
    codes, alpha = l2_optimal(w)
    for r in range(4):
        err = ((w[r] - alpha[r] * codes[r].float()) ** 2).sum().item()
        best = float("inf")
        for t in itertools.product((-1, 0, 1), repeat=7):
            t = torch.tensor(t, dtype=torch.float32)
            if t.abs().sum() == 0:
                continue
            a = (w[r] @ t) / (t @ t)  # the optimal scale for these codes
            best = min(best, ((w[r] - a * t) ** 2).sum().item())
        assert err == pytest.approx(best, rel=1e-5)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), k=st.integers(1, 23), fmt=st.sampled_from(["2bit", "trit5"]), seed=st.integers(0, 99))
def test_packing_round_trips(n, k, fmt, seed):
    codes = torch.randint(-1, 2, (n, k), generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    packed = pack(codes, fmt)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (-(-k // 128) * 32 * n if fmt == "2bit" else -(-n * k // 5))  # 2bit: K padded to 128
    assert torch.equal(unpack(packed, fmt, (n, k)), codes)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown method"):
        TernaryConfig(method="bitnet")
    with pytest.raises(ValueError, match="granularity"):
        TernaryConfig(granularity="group")
    with pytest.raises(ValueError, match="packing"):
        TernaryConfig(packing="3bit")


def _tiny_transformer():
    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=3,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))


def _inputs():
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 16, 16, generator=g),
                encoder_hidden_states=torch.randn(1, 5, 32, generator=g),
                pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                guidance=torch.tensor([3.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3), return_dict=False)


@pytest.mark.parametrize("config", [TernaryConfig("absmean", "tensor"), TernaryConfig("twn", "channel", "trit5")])
def test_quantize_replaces_exactly_the_block_linears(config):
    model = _tiny_transformer()
    oracle = copy.deepcopy(model)
    expected = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
                and (n.startswith("transformer_blocks.") or n.startswith("single_transformer_blocks."))]
    report = quantize_(model, config)
    # 14 linears per double block, 6 per single block: on FLUX.1-dev 19 * 14 + 38 * 6 = 494
    assert sorted(report.quantized) == sorted(expected) and len(expected) == 2 * 14 + 3 * 6
    kept = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert kept and all(not n.startswith(("transformer_blocks.", "single_transformer_blocks.")) for n in kept)
    assert {"x_embedder", "context_embedder", "proj_out", "norm_out.linear"} <= kept
    assert all(isinstance(model.get_submodule(n), TernaryLinear) for n in expected)
    assert f"method={config.method}" in repr(model.get_submodule(expected[0]))
    # independent oracle: dense weights replaced by scale * codes from the rule itself
    rule = {"absmean": absmean, "twn": twn}[config.method]
    for n in expected:
        lin = oracle.get_submodule(n)
        codes, scale = rule(lin.weight.data, config.per_channel)
        lin.weight.data = codes.float() * scale
    with torch.no_grad():
        assert torch.allclose(model(**_inputs())[0], oracle(**_inputs())[0], atol=1e-5)
    assert block_linear_names(model) == []  # nothing left to quantize


@pytest.mark.parametrize(("packing", "act"), [("2bit", None), ("2bit", "int8"), ("2bit", "fp8"), ("trit5", None)])
def test_the_cpu_path_keeps_its_unpacked_codes_and_gives_the_references_bytes(packing, act):
    """The CPU forward unpacks once and reuses the codes: the same bytes as the reference that unpacks on every call
    (`kernels.ternary_linear(..., backend="reference")`), and new codes once `packed` is written."""
    from flux158.kernels import ternary_linear
    from flux158.kernels.reference import ternary_linear_dense

    torch.manual_seed(0)
    linear = nn.Linear(40, 24)
    layer = TernaryLinear.from_linear(linear, TernaryConfig("twn", "channel", packing, act_bits=8 if act else 16,
                                                            act_format=act or "int8"))
    x = torch.randn(3, 5, 40)

    def reference() -> torch.Tensor:
        if packing == "2bit":
            return ternary_linear(x, layer.packed, layer.scale, layer.bias, 40, act, "reference")
        return ternary_linear_dense(x, layer.codes(), layer.scale, layer.bias, act)

    assert torch.equal(layer(x), reference())
    kept = layer._float_codes()
    assert layer._float_codes() is kept  # not unpacked again
    flipped = -layer.codes()
    layer.packed.copy_(pack(flipped, packing))
    assert torch.equal(layer._float_codes(), flipped.float()) and torch.equal(layer(x), reference())
