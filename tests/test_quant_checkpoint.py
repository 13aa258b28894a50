"""Quantized checkpoints: bit-identical round trip, meta-device loading, clear errors, and use by the generate stage."""

import json

import pytest
import torch
from diffusers import FluxPipeline

from flux158.experiments import generate
from flux158.models.tiny import TinyFluxSpec, ensure_tiny_pipeline
from flux158.quant import QuantizedCheckpointError, TernaryConfig, TernaryLinear, load_quantized, quantize_
from flux158.quant import save_quantized as save


@pytest.fixture
def quantized(model_cache):
    pipe = FluxPipeline.from_pretrained(ensure_tiny_pipeline(TinyFluxSpec(), model_cache))
    quantize_(pipe.transformer, TernaryConfig("twn", "channel", "trit5"))
    return pipe


def _out(transformer):
    g = torch.Generator().manual_seed(0)
    kwargs = dict(hidden_states=torch.randn(1, 16, 64, generator=g),
                  encoder_hidden_states=torch.randn(1, 4, 32, generator=g),
                  pooled_projections=torch.randn(1, 32, generator=g),
                  timestep=torch.tensor([0.3]), guidance=torch.tensor([3.5]), img_ids=torch.zeros(16, 3),
                  txt_ids=torch.zeros(4, 3), return_dict=False)
    with torch.no_grad():
        return transformer(**kwargs)[0]


def test_save_then_load_is_bit_identical(quantized, tmp_path):
    path = save(quantized.transformer, tmp_path / "q", TernaryConfig("twn", "channel", "trit5"), "tiny", None)
    meta = json.loads((path / "quantization.json").read_text())
    assert meta["format_version"] == 2 and meta["method"] == "twn" and len(meta["layers"]) == 2 * 14 + 2 * 6
    loaded = load_quantized(path)
    assert sum(isinstance(m, TernaryLinear) for m in loaded.modules()) == len(meta["layers"])
    assert not any(p.is_meta for p in loaded.parameters()) and not any(b.is_meta for b in loaded.buffers())
    assert torch.equal(_out(loaded), _out(quantized.transformer))
    assert not list(tmp_path.glob("*.partial"))


def test_input_scales_survive_save_and_load(model_cache, tmp_path):
    from flux158.quant.ternary import l2_optimal_two_sided

    transformer = FluxPipeline.from_pretrained(ensure_tiny_pipeline(TinyFluxSpec(), model_cache)).transformer
    config = TernaryConfig("distill", "channel", input_scales=True)
    reference = _out(transformer)
    for name, module in list(transformer.named_modules()):
        if isinstance(module, torch.nn.Linear) and name.startswith(("transformer_blocks", "single_")):
            codes, scale, in_scale = l2_optimal_two_sided(module.weight.detach())
            parent, _, child = name.rpartition(".")
            setattr(transformer.get_submodule(parent), child,
                    TernaryLinear.from_codes(codes, scale, module.bias, config, in_scale=in_scale))
    quantized = _out(transformer)
    assert not torch.equal(quantized, reference)
    loaded = load_quantized(save(transformer, tmp_path / "q", config, "tiny", None))
    layer = loaded.get_submodule("transformer_blocks.0.attn.to_q")
    assert layer.config.input_scales and not torch.all(layer.in_scale == 1)
    saved = transformer.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items())
    torch.testing.assert_close(_out(loaded), quantized)  # same tensors; float sums may differ in the last bit


def test_corrupt_checkpoints_fail_clearly(quantized, tmp_path):
    path = save(quantized.transformer, tmp_path / "q", TernaryConfig("twn", "channel", "trit5"))
    weights = path / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(QuantizedCheckpointError, match="corrupt or was changed"):
        load_quantized(path)
    weights.write_bytes(good)
    meta = json.loads((path / "quantization.json").read_text())
    (path / "quantization.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(QuantizedCheckpointError, match="format version 99"):
        load_quantized(path)
    arch = json.loads((path / "transformer_config.json").read_text())
    (path / "quantization.json").write_text(json.dumps(meta))
    (path / "transformer_config.json").write_text(json.dumps({**arch, "num_single_layers": 3}))
    with pytest.raises(QuantizedCheckpointError, match="does not match its architecture"):
        load_quantized(path)
    with pytest.raises(QuantizedCheckpointError, match="not a readable"):
        load_quantized(tmp_path / "nowhere")


def test_generate_uses_a_quantized_checkpoint(quantized, compose, tmp_path):
    path = save(quantized.transformer, tmp_path / "q", TernaryConfig("twn", "channel", "trit5"))
    common = ["experiment=smoke", "logger=none", "benchmark.samples_per_prompt=1"]
    from_ckpt = generate.run(compose(*common, "quant=bf16", f"quant.checkpoint={path}", "quant.name=twn-ckpt",
                                     output_dir=tmp_path / "a"))
    in_memory = generate.run(compose(*common, "quant=twn", "quant.config.packing=trit5", output_dir=tmp_path / "b"))
    a = sorted(p.read_bytes() for p in from_ckpt.rglob("*.png"))
    b = sorted(p.read_bytes() for p in in_memory.rglob("*.png"))
    assert len(a) == 6 and a == b


def test_streaming_quantization_of_a_sharded_checkpoint_equals_in_memory(model_cache, tmp_path):
    from flux158.quant.streaming import quantize_checkpoint_streaming

    pipe = FluxPipeline.from_pretrained(ensure_tiny_pipeline(TinyFluxSpec(), model_cache))
    pipe.transformer.save_pretrained(tmp_path / "bf16", max_shard_size="60KB")  # many shards, as FLUX.1-dev has 3
    assert len(list((tmp_path / "bf16").glob("*.safetensors"))) > 3
    config = TernaryConfig("l2_optimal", "channel", lowrank_rank=2)
    stats = quantize_checkpoint_streaming(tmp_path / "bf16", tmp_path / "q", config, "tiny", progress=False)
    streamed = load_quantized(tmp_path / "q")

    report = quantize_(pipe.transformer, config)
    assert sorted(stats) == sorted(report.layers) and len(stats) == 40
    assert all(stats[n].sqnr_db == pytest.approx(report.layers[n].sqnr_db) for n in stats)
    a, b = streamed.state_dict(), pipe.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same bytes
    torch.testing.assert_close(_out(streamed), _out(pipe.transformer), rtol=0, atol=1e-5)  # GEMM blocking may differ
