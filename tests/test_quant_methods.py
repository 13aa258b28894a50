"""Calibrated methods on the tiny FLUX: teacher capture, block-wise execution, GPTQ-ternary, low rank, input scales.
`distill`'s own stages are in test_distill.py."""

import itertools

import pytest
import torch

from conftest import TINY_PROMPTS as PROMPTS
from conftest import fresh_transformer, tiny_sampler
from flux158.quant import TernaryConfig, TernaryLinear, quantize_
from flux158.quant.blocks import embed, forward_from
from flux158.quant.calibration import CalibrationSet, CaptureSettings, load_records, write_calibration
from flux158.quant.config import DistillConfig, GPTQConfig
from flux158.quant.gptq import gptq_ternary
from flux158.quant.metrics import velocity_error
from flux158.quant.storage import storage_report
from flux158.quant.ternary import l2_optimal, l2_optimal_two_sided, weighted_l2_scale

SAMPLER = tiny_sampler()


def test_captured_records_are_the_teachers_own_calls(tiny_pipe, calib_dir):
    calib = CalibrationSet.load(calib_dir)
    assert len(calib) == len(PROMPTS) * 2  # FLUX.1-dev style: one call per step, 2 kept steps per prompt
    assert len(set(calib.sigmas().tolist())) > 1
    kwargs, target = calib.batch([0, 5])
    with torch.no_grad():
        again = tiny_pipe.transformer(**kwargs, return_dict=False)[0]
    torch.testing.assert_close(again, target, rtol=1e-5, atol=1e-6)
    per_prompt = {}
    for r in calib.records:
        per_prompt.setdefault(int(r["prompt_index"]), set()).add(int(r["step"]))
    assert sorted(per_prompt) == list(range(len(PROMPTS))) and all(len(s) == 2 for s in per_prompt.values())


def test_calibration_does_not_depend_on_sharding_or_resume(tiny_pipe, calib_dir, tmp_path):
    settings = CaptureSettings(2, 3, 2, 0)
    for shard in (1, 0):  # shard 1 first, then shard 0: the files must equal the single-process run's
        write_calibration(tiny_pipe, PROMPTS, tmp_path, "train", SAMPLER, settings, shard, 2, progress=False)
    assert write_calibration(tiny_pipe, PROMPTS, tmp_path, "train", SAMPLER, settings, progress=False) == 0
    for path in sorted(calib_dir.glob("train-*.safetensors")):
        a, b = load_records(path), load_records(tmp_path / path.name)
        assert len(a) == len(b)
        for ra, rb in zip(a, b, strict=True):
            assert ra.keys() == rb.keys() and all(torch.equal(ra[k], rb[k]) for k in ra)


def test_block_by_block_execution_equals_the_model(tiny_pipe, calib_dir):
    kwargs, target = CalibrationSet.load(calib_dir).batch([1, 2, 3])
    with torch.no_grad():
        out = forward_from(tiny_pipe.transformer, embed(tiny_pipe.transformer, kwargs))
    torch.testing.assert_close(out, target, rtol=1e-5, atol=1e-6)


def test_weighted_l2_scale_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    w, h = torch.randn(3, 6, generator=g), torch.rand(6, generator=g) + 0.1
    alpha = weighted_l2_scale(w, h)
    for r in range(3):
        best_err, best_alpha = float("inf"), None
        for t in itertools.product((-1.0, 0.0, 1.0), repeat=6):
            t = torch.tensor(t)
            if not t.any():
                continue
            a = (h * w[r] * t).sum() / (h * t * t).sum()
            err = (h * (w[r] - a * t) ** 2).sum().item()
            if err < best_err:
                best_err, best_alpha = err, a.item()
        assert alpha[r, 0].item() == pytest.approx(abs(best_alpha), rel=1e-5)  # t and -t tie


def test_gptq_ternary_beats_rounding_on_correlated_inputs():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(64, 64, generator=g)
    x = torch.randn(2048, 64, generator=g) @ mix  # correlated features, as in real activations
    w = torch.randn(32, 64, generator=g) * 0.05
    h = x.T @ x / x.shape[0]
    codes, scale = gptq_ternary(w, h, GPTQConfig(block_size=16))
    rtn_codes, rtn_scale = l2_optimal(w)

    def output_error(c, s):
        return ((x @ (w - s * c.float()).T) ** 2).mean().item()

    assert set(codes.unique().tolist()) <= {-1, 0, 1}
    assert output_error(codes, scale) < 0.8 * output_error(rtn_codes, rtn_scale)  # measured: 0.66x


def test_gptq_ternary_with_white_inputs_is_the_l2_optimal_rule():
    w = torch.randn(8, 40, generator=torch.Generator().manual_seed(1))
    codes, scale = gptq_ternary(w, torch.eye(40), GPTQConfig(block_size=16))  # no cross terms: nothing to feed back
    ref_codes, ref_scale = l2_optimal(w)
    assert torch.equal(codes, ref_codes)
    torch.testing.assert_close(scale, ref_scale)


def test_gptq_and_distill_reduce_the_output_error(model_cache, calib_dir):
    calib = CalibrationSet.load(calib_dir)
    errors = {}
    for name, config in [
        ("absmean", TernaryConfig("absmean", "channel")),
        ("gptq", TernaryConfig("gptq", "channel")),
        ("distill", TernaryConfig("distill", "channel", distill=DistillConfig(block_steps=150, e2e_steps=150))),
    ]:
        transformer = fresh_transformer(model_cache)
        report = quantize_(transformer, config, calib, batch_size=4)
        assert len(report.layers) == len(report.quantized) == 40
        errors[name] = velocity_error(transformer, calib, 4)["rel_mse"]
        if name == "distill":  # stage 1 lowers every block's output error below its stage-0 (L2-optimal) init
            assert all(b["loss_final"] < b["loss_init"] for b in report.blocks)
            assert report.e2e_losses[-1] < report.e2e_losses[0]
    print(errors)
    assert errors["distill"] < errors["gptq"] < errors["absmean"], errors


def test_blockwise_quantization_resumes_from_saved_blocks(model_cache, calib_dir, tmp_path):
    calib = CalibrationSet.load(calib_dir)
    config = TernaryConfig("gptq", "channel")
    first = fresh_transformer(model_cache)
    quantize_(first, config, calib, batch_size=4, checkpoint_dir=tmp_path)
    saved = sorted(tmp_path.glob("block-*.safetensors"))
    assert len(saved) == 4
    saved[-1].unlink()  # as if killed during the last block
    second = fresh_transformer(model_cache)
    quantize_(second, config, calib, batch_size=4, checkpoint_dir=tmp_path)
    for (name, a), (_, b) in zip(first.named_buffers(), second.named_buffers(), strict=True):
        assert torch.equal(a, b), name


def test_lowrank_correction_lowers_weight_error_and_is_counted(model_cache):
    plain, corrected = fresh_transformer(model_cache), fresh_transformer(model_cache)
    weights = {n: m.weight.detach().clone() for n, m in plain.named_modules() if isinstance(m, torch.nn.Linear)}
    quantize_(plain, TernaryConfig("l2_optimal", "channel"))
    quantize_(corrected, TernaryConfig("l2_optimal", "channel", lowrank_rank=4))
    name = "transformer_blocks.0.ff.net.2"
    p, c = plain.get_submodule(name), corrected.get_submodule(name)
    assert isinstance(c, TernaryLinear) and c.lowrank_a.shape == (p.out_features, 4)
    w = weights[name]
    residual = w - p.dequantize()
    expected = torch.linalg.svdvals(residual)[4:].square().sum()  # Eckart-Young: what rank 4 cannot remove
    got = (w - c.dequantize() - c.lowrank_a @ c.lowrank_b).square().sum()
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)
    arch = fresh_transformer(model_cache)
    base, extra = storage_report(arch), storage_report(arch, lowrank_rank=4)
    linears = [arch.get_submodule(n) for n in weights if n.startswith(("transformer_blocks", "single_"))]
    assert extra.packed_bytes["2bit"] - base.packed_bytes["2bit"] == sum(
        4 * (m.in_features + m.out_features) * 2 for m in linears)


def test_two_sided_fit_beats_one_scale_per_row():
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.rand(48, 1, generator=g) + 0.5, torch.rand(80, generator=g) * 3 + 0.2
    exact = rows * torch.randint(-1, 2, (48, 80), generator=g).float() * cols  # exactly two-sided ternary
    noisy = torch.randn(48, 80, generator=g) * cols  # input channels of unequal magnitude
    for w, ratio in ((exact, 0.5), (noisy, 0.9)):
        codes, scale = l2_optimal(w)
        per_row = (w - scale * codes).square().sum()
        codes2, scale2, in_scale = l2_optimal_two_sided(w)
        assert set(codes2.unique().tolist()) <= {-1, 0, 1} and scale2.shape == (48, 1) and in_scale.shape == (80,)
        assert (in_scale > 0).all() and in_scale.mean().item() == pytest.approx(1.0, rel=1e-5)
        assert (w - scale2 * codes2 * in_scale).square().sum() < ratio * per_row


@pytest.mark.parametrize("packing", ["2bit", "trit5"])
def test_input_scales_multiply_the_activations(packing):
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(-1, 2, (24, 40), generator=g).to(torch.int8)
    scale, in_scale, bias = torch.rand(24, 1, generator=g) + 0.1, torch.rand(40, generator=g) + 0.5, torch.randn(24)
    config = TernaryConfig("distill", "channel", packing, input_scales=True)
    layer = TernaryLinear.from_codes(codes, scale, bias, config, in_scale=in_scale)
    x = torch.randn(3, 5, 40, generator=g)
    expected = x @ (scale * codes.float() * in_scale).T + bias  # the two-sided weight, written out
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.dequantize(), scale * codes.float() * in_scale)
    with pytest.raises(ValueError, match="input_scales is off"):
        TernaryLinear.from_codes(codes, scale, bias, TernaryConfig("distill", "channel"), in_scale=in_scale)
    with pytest.raises(ValueError, match="learned by distill"):
        TernaryConfig("absmean", "channel", input_scales=True)


def test_calibrated_methods_validate_their_config():
    with pytest.raises(ValueError, match="channel"):
        TernaryConfig("gptq", "tensor")
    config = TernaryConfig("distill", "channel", distill={"block_steps": 5})
    assert isinstance(config.distill, DistillConfig) and config.distill.block_steps == 5
    with pytest.raises(ValueError, match="calibration"):
        quantize_(torch.nn.Module(), TernaryConfig("gptq", "channel"))
