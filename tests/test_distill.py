"""`distill` on the tiny FLUX: its straight-through layer, both stages, their options, resume and checkpointing."""

import copy

import pytest
import torch

from conftest import fresh_transformer
from flux158.generation.images import SamplerSettings
from flux158.quant import TernaryConfig, TernaryLinear, quantize_
from flux158.quant.blocks import embed
from flux158.quant.calibration import CalibrationSet, CaptureSettings, write_calibration
from flux158.quant.config import DistillConfig
from flux158.quant.storage import storage_report
from flux158.quant.ternary import l2_optimal_two_sided


def test_distill_learns_input_scales_and_counts_their_bytes(model_cache, calib_dir):
    calib = CalibrationSet.load(calib_dir)
    transformer = fresh_transformer(model_cache)
    originals = {n: m.weight.detach().clone() for n, m in transformer.named_modules()
                 if isinstance(m, torch.nn.Linear) and n.startswith(("transformer_blocks", "single_"))}
    config = TernaryConfig("distill", "channel", input_scales=True,
                           distill=DistillConfig(block_steps=3, e2e_steps=3))
    quantize_(transformer, config, calib, batch_size=4)
    for name, weight in originals.items():
        layer = transformer.get_submodule(name)
        assert isinstance(layer, TernaryLinear) and layer.in_scale.shape == (weight.shape[1],)
        _, _, init = l2_optimal_two_sided(weight)
        assert not torch.equal(layer.in_scale, init), name  # trained away from the stage-0 fit
    arch = fresh_transformer(model_cache)
    base, extra = storage_report(arch), storage_report(arch, input_scales=True)
    assert extra.packed_bytes["2bit"] - base.packed_bytes["2bit"] == sum(w.shape[1] * 2 for w in originals.values())


@pytest.mark.parametrize("mode", ["lsq", "codes"])
def test_scale_gradient_beside_latent_weights(mode):
    from flux158.quant.ste import STETernaryLinear

    g = torch.Generator().manual_seed(2)
    weight, scale = torch.randn(6, 10, generator=g), torch.rand(6, 1, generator=g) + 0.5
    layer = STETernaryLinear(weight, scale, None, ste_clip=1.49, scale_gradient=mode)
    x, upstream = torch.randn(4, 10, generator=g), torch.randn(4, 6, generator=g)
    (layer(x) * upstream).sum().backward()
    u = (weight / scale).clamp(-1.49, 1.49)
    grad_w = upstream.T @ x  # dL/d(effective weight)
    inside = (weight / scale).abs() < 1.49
    # d(effective weight)/d(scale) per element: the code, minus u where the clamp passes gradient (LSQ)
    factor = u.round() if mode == "codes" else u.round() - u * inside
    torch.testing.assert_close(layer.scale.grad, (factor * grad_w).sum(1, keepdim=True))
    # the latent weights' straight-through gradient is the same in both modes
    torch.testing.assert_close(layer.weight.grad, grad_w * inside)
    with pytest.raises(ValueError, match="scale_gradient"):
        DistillConfig(scale_gradient="ste")


@pytest.fixture(scope="module")
def guided(tmp_path_factory):
    """A random toy-world pipeline (a CFG model) and its calibration: 3 prompts x 2 states x both halves."""
    from flux158.models import load_pipeline
    from flux158.toyworld.pipeline import ToyWorldSource

    directory = tmp_path_factory.mktemp("guided")
    pipe = load_pipeline(ToyWorldSource(None), device="cpu", dtype=torch.float32, cache_dir=directory / "cache")
    pipe.set_progress_bar_config(disable=True)
    sampler = SamplerSettings(num_inference_steps=5, guidance_scale=3.0, height=32, width=32, max_sequence_length=16)
    write_calibration(pipe, ["a red circle", "two squares", "a blue triangle"], directory, "train", sampler,
                      CaptureSettings(2, 3, 2, 0), progress=False)
    return pipe, CalibrationSet.load(directory)


def test_guided_calls_keep_both_halves_paired(guided):
    pipe, calib = guided
    pairs = calib.guidance_pairs()
    assert len(calib) == 3 * 2 * 2 and len(pairs) == 3 * 2
    empty, _ = pipe.encode_prompt([""])
    for u, c in pairs:
        ru, rc = calib.records[u], calib.records[c]
        assert torch.equal(ru["hidden_states"], rc["hidden_states"]) and torch.equal(ru["timestep"], rc["timestep"])
        torch.testing.assert_close(ru["encoder_hidden_states"], empty)  # the unconditional half: empty prompt
        assert not torch.equal(ru["encoder_hidden_states"], rc["encoder_hidden_states"])


def _one_by_one(transformer, calib, index):
    kwargs, target = calib.batch([index])
    with torch.no_grad():
        return transformer(**kwargs, return_dict=False)[0], target


def test_guidance_direction_error_against_a_pair_by_pair_computation(guided, model_cache, calib_dir):
    from flux158.quant.metrics import guidance_direction_error

    pipe, calib = guided
    teacher = pipe.transformer
    assert guidance_direction_error(teacher, calib)["rel_mse"] < 1e-8  # the records are this model's outputs
    student = copy.deepcopy(teacher)
    quantize_(student, TernaryConfig("l2_optimal", "channel"))
    err = ref = 0.0
    for u, c in calib.guidance_pairs():
        (out_u, t_u), (out_c, t_c) = _one_by_one(student, calib, u), _one_by_one(student, calib, c)
        err += ((out_c - out_u) - (t_c - t_u)).square().sum().item()
        ref += (t_c - t_u).square().sum().item()
    result = guidance_direction_error(student, calib, batch_size=4)
    assert result["rel_mse"] == pytest.approx(err / ref, rel=1e-4)
    assert result["rel_mse"] > 0.05  # a data-free ternary model is far off
    # the tiny FLUX stands for guidance-distilled FLUX.1-dev: no CFG pairs, no direction
    assert guidance_direction_error(fresh_transformer(model_cache), CalibrationSet.load(calib_dir)) is None


def test_end_to_end_direction_loss_adds_the_guidance_direction_term(guided, model_cache, calib_dir, caplog):
    from flux158.quant import distill

    pipe, calib = guided
    pairs = calib.guidance_pairs()
    student = copy.deepcopy(pipe.transformer)
    quantize_(student, TernaryConfig("l2_optimal", "channel"))
    # stage 2's first step sees every pair (batch = all of them) through the untrained scales: its loss is the
    # guided velocity's relative MSE plus the weight times the direction's, both over all pairs
    guided_err = guided_ref = dir_err = dir_ref = 0.0
    for u, c in pairs:
        (out_u, t_u), (out_c, t_c) = _one_by_one(student, calib, u), _one_by_one(student, calib, c)
        guided_err += ((out_u + 3.0 * (out_c - out_u)) - (t_u + 3.0 * (t_c - t_u))).square().sum().item()
        guided_ref += (t_u + 3.0 * (t_c - t_u)).square().sum().item()
        dir_err += ((out_c - out_u) - (t_c - t_u)).square().sum().item()
        dir_ref += (t_c - t_u).square().sum().item()
    config = TernaryConfig("distill", "channel", distill=DistillConfig(
        block_steps=0, e2e_steps=1, batch_size=len(pairs), e2e_guidance=3.0, e2e_direction_weight=0.5))
    losses = distill.tune_end_to_end(student, calib, config, progress=False)
    assert losses[0] == pytest.approx(guided_err / guided_ref + 0.5 * dir_err / dir_ref, rel=1e-4)
    # the tiny FLUX stands for guidance-distilled FLUX.1-dev: no CFG pairs, so the term is left out, with a warning
    losses = []
    for weight in (0.0, 0.5):
        flux = fresh_transformer(model_cache)
        quantize_(flux, TernaryConfig("l2_optimal", "channel"))
        config = TernaryConfig("distill", "channel", distill=DistillConfig(
            block_steps=0, e2e_steps=2, batch_size=4, e2e_guidance=3.0, e2e_direction_weight=weight))
        losses.append(distill.tune_end_to_end(flux, CalibrationSet.load(calib_dir), config, progress=False))
    assert losses[1] == losses[0]
    assert "e2e_direction_weight=0.5 has no effect" in caplog.text
    with pytest.raises(ValueError, match="e2e_direction_weight"):
        DistillConfig(e2e_direction_weight=-1.0)


def test_end_to_end_stage_resumes_exactly_after_a_kill(model_cache, calib_dir, tmp_path, monkeypatch):
    from flux158.quant import distill

    calib = CalibrationSet.load(calib_dir)
    config = TernaryConfig("distill", "channel", distill=DistillConfig(block_steps=0, e2e_steps=12))

    def start():
        transformer = fresh_transformer(model_cache)
        quantize_(transformer, TernaryConfig("l2_optimal", "channel"))
        return transformer

    whole = start()
    losses = distill.tune_end_to_end(whole, calib, config, progress=False)
    killed = start()
    original, calls = distill._rel_mse, {"n": 0}

    def dies_at_step_8(*args):
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(distill, "_rel_mse", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        distill.tune_end_to_end(killed, calib, config, progress=False, checkpoint_dir=tmp_path, checkpoint_every=5)
    monkeypatch.setattr(distill, "_rel_mse", original)
    resumed = start()
    again = distill.tune_end_to_end(resumed, calib, config, progress=False, checkpoint_dir=tmp_path,
                                    checkpoint_every=5)
    assert again == losses  # steps 0-4 from the checkpoint, 5-11 recomputed: the same numbers
    for (name, a), (_, b) in zip(whole.named_buffers(), resumed.named_buffers(), strict=True):
        assert torch.equal(a, b), name


def test_end_to_end_stage_tunes_the_unquantized_parameters_only_when_asked(model_cache, calib_dir):
    from flux158.quant import distill

    calib, lr = CalibrationSet.load(calib_dir), 1e-3
    tuned = {}
    for rate in (0.0, lr):
        transformer = fresh_transformer(model_cache)
        quantize_(transformer, TernaryConfig("l2_optimal", "channel"))
        before = {n: p.detach().clone() for n, p in transformer.named_parameters()}
        codes = {n: m.codes() for n, m in transformer.named_modules() if isinstance(m, TernaryLinear)}
        config = TernaryConfig("distill", "channel",
                               distill=DistillConfig(block_steps=0, e2e_steps=1, e2e_lr_unquantized=rate))
        distill.tune_end_to_end(transformer, calib, config, progress=False)
        assert all(torch.equal(m.codes(), codes[n]) for n, m in transformer.named_modules()
                   if isinstance(m, TernaryLinear))
        assert all(p.requires_grad for p in transformer.parameters())  # flags restored
        tuned[rate] = {n: (p.detach() - before[n]).abs() for n, p in transformer.named_parameters()}
    assert all(not d.any() for d in tuned[0.0].values())
    # Adam's first step moves every parameter with a gradient by the learning rate (m / sqrt(v) = sign(g))
    for name in ("proj_out.weight", "x_embedder.weight", "transformer_blocks.0.attn.norm_q.weight"):
        step = tuned[lr][name]
        assert step.max().item() <= lr * (1 + 1e-5) and step.median().item() > 0.9 * lr, name
    with pytest.raises(ValueError, match="e2e_lr_unquantized"):
        DistillConfig(e2e_lr_unquantized=-1.0)


def test_sigma_weights_follow_their_bands():
    from flux158.quant.distill import sigma_weights

    sigmas = torch.tensor([0.05, 0.2, 0.21, 0.5, 0.8, 0.81, 1.0])
    bands = DistillConfig(e2e_sigma_weights=[[0.2, 1.0], [0.8, 2.5], [1.0, 0.5]]).e2e_sigma_weights
    assert bands == ((0.2, 1.0), (0.8, 2.5), (1.0, 0.5))  # lists from Hydra become tuples
    assert sigma_weights(sigmas, bands).tolist() == [1.0, 1.0, 2.5, 2.5, 2.5, 0.5, 0.5]
    assert sigma_weights(sigmas, ((0.5, 3.0),)).tolist() == [3.0, 3.0, 3.0, 3.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="increasing"):
        DistillConfig(e2e_sigma_weights=[[0.8, 1.0], [0.2, 2.0]])
    with pytest.raises(ValueError, match="weight >= 0"):
        DistillConfig(e2e_sigma_weights=[[0.8, -1.0]])


def test_sigma_weighted_loss_reweights_rows_of_the_relative_error():
    from flux158.quant.distill import _rel_mse, _weighted_rel_mse

    torch.manual_seed(0)
    target, pred = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    torch.testing.assert_close(_weighted_rel_mse(pred, target, torch.ones(3)), _rel_mse(pred, target))
    per_row = [((pred[i] - target[i]) ** 2).sum() for i in range(3)]
    expected = (2 * per_row[0] + 0.5 * per_row[2]) / (target ** 2).sum()
    torch.testing.assert_close(_weighted_rel_mse(pred, target, torch.tensor([2.0, 0.0, 0.5])), expected)


def test_sigma_weighted_end_to_end_stage_trains_on_the_weighted_loss(model_cache, calib_dir):
    from flux158.quant import distill

    calib = CalibrationSet.load(calib_dir)
    bands = ((0.5, 3.0), (1.0, 0.0))
    opts = DistillConfig(block_steps=0, e2e_steps=2, e2e_sigma_weights=bands)
    picked = next(distill._row_sampler(len(calib), opts.batch_size, torch.Generator().manual_seed(opts.seed)))
    start = fresh_transformer(model_cache)
    quantize_(start, TernaryConfig("l2_optimal", "channel"))
    kwargs, target = calib.batch(picked.tolist())
    with torch.no_grad():
        err = (start(**kwargs, return_dict=False)[0] - target).square().flatten(1).sum(1)
    sigmas = calib.sigmas()[picked]
    weights = torch.where(sigmas <= 0.5, 3.0, 0.0)
    assert 0 < int((sigmas <= 0.5).sum()) < len(picked)  # the batch spans both bands
    expected = {"uniform": (err.sum() / target.square().sum()).item(),
                "banded": ((weights * err).sum() / target.square().sum()).item()}
    assert expected["banded"] != pytest.approx(expected["uniform"], rel=0.05)
    for name, config in (("uniform", DistillConfig(block_steps=0, e2e_steps=2)), ("banded", opts)):
        transformer = fresh_transformer(model_cache)
        quantize_(transformer, TernaryConfig("l2_optimal", "channel"))
        losses = distill.tune_end_to_end(transformer, calib, TernaryConfig("distill", "channel", distill=config),
                                         progress=False)
        assert losses[0] == pytest.approx(expected[name], rel=1e-4)  # step 0: the loss before any update


def test_attention_loss_measures_the_attention_outputs_against_the_fp_block(model_cache, calib_dir):
    import copy

    from flux158.quant.blocks import flux_blocks, run_block
    from flux158.quant.distill import attention_loss

    transformer = fresh_transformer(model_cache)
    kwargs, _ = CalibrationSet.load(calib_dir).batch([0, 1, 2])
    with torch.no_grad():
        state = embed(transformer, kwargs)
        block = flux_blocks(transformer)[0]  # a double block: image and text attention outputs
        teacher = copy.deepcopy(block)
        pred, loss = attention_loss(block, teacher, state)
        torch.testing.assert_close(pred.hidden, run_block(teacher, state).hidden)
        assert loss.item() == 0.0
        block.attn.to_out[0].weight.mul_(2)  # the image stream's attention output doubles, the text stream's not:
        block.attn.to_out[0].bias.mul_(2)  # relative MSE |2a - a|^2 / |a|^2 = 1, plus 0
        _, loss = attention_loss(block, teacher, state)
    assert loss.item() == pytest.approx(1.0, rel=1e-5)


def test_attention_targeted_stage_one_trains_and_stays_ternary(model_cache, calib_dir):
    transformer = fresh_transformer(model_cache)
    opts = DistillConfig(block_steps=20, e2e_steps=0, attn_loss_weight=1.0)
    report = quantize_(transformer, TernaryConfig("distill", "channel", distill=opts), CalibrationSet.load(calib_dir),
                       batch_size=4)
    assert all(b["loss_final"] < b["loss_init"] for b in report.blocks)
    layers = [m for m in transformer.modules() if isinstance(m, TernaryLinear)]
    assert len(layers) == 40 and all(set(m.codes().unique().tolist()) <= {-1, 0, 1} for m in layers)
    with pytest.raises(ValueError, match="attn_loss_weight"):
        DistillConfig(attn_loss_weight=-1.0)


def test_end_to_end_stage_with_activation_checkpointing_trains_the_same_model(model_cache, calib_dir, monkeypatch):
    """Recomputing each block in the backward pass (what fits FLUX.1-dev's stage 2 on one GPU) changes memory, not
    the gradients: the same losses and the same final scales as keeping the activations."""
    from diffusers import FluxTransformer2DModel

    from flux158.quant import distill

    calib = CalibrationSet.load(calib_dir)
    recomputed = {"n": 0}
    original = FluxTransformer2DModel.enable_gradient_checkpointing

    def counting(self, *args, **kwargs):
        recomputed["n"] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(FluxTransformer2DModel, "enable_gradient_checkpointing", counting)
    results = {}
    for mode in (False, True):
        transformer = fresh_transformer(model_cache)
        quantize_(transformer, TernaryConfig("l2_optimal", "channel"))
        config = TernaryConfig("distill", "channel",
                               distill=DistillConfig(block_steps=0, e2e_steps=4, e2e_checkpointing=mode))
        results[mode] = (distill.tune_end_to_end(transformer, calib, config, progress=False), transformer)
        assert not transformer.gradient_checkpointing  # switched off again afterwards
    assert recomputed["n"] == 1  # only the checkpointed run enabled it ("auto" on a CPU: off)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=0)
    for (name, a), (_, b) in zip(results[False][1].named_buffers(), results[True][1].named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    with pytest.raises(ValueError, match="e2e_checkpointing"):
        DistillConfig(e2e_checkpointing="sometimes")


def test_block_rows_bounds_the_rows_stage_1_holds_and_timings_cover_both_stages(model_cache, calib_dir):
    calib = CalibrationSet.load(calib_dir)
    transformer = fresh_transformer(model_cache)
    opts = DistillConfig(block_steps=2, e2e_steps=2, batch_size=2, block_rows=4)
    report = quantize_(transformer, TernaryConfig("distill", "channel", distill=opts), calib)
    assert len(calib) > 4 and report.timings["blockwise_rows"] == 4
    assert report.timings["blocks"] == len(report.blocks) == 4 and report.timings["e2e_steps"] == 2
    assert [b["kind"] for b in report.blocks] == ["double", "double", "single", "single"]
    assert all(b["steps"] == 2 and b["train_seconds"] > 0 for b in report.blocks)
    assert report.timings["blockwise_seconds"] > sum(b["train_seconds"] for b in report.blocks)
    with pytest.raises(ValueError, match="block_rows"):
        DistillConfig(batch_size=4, block_rows=2)
