"""Storage of FLUX.1-dev from its architecture on the meta device, against the paper's parameter accounting."""

import json

from flux158.experiments import storage
from flux158.models.hub import meta_flux_transformer
from flux158.quant import block_linear_names
from flux158.quant.storage import storage_report

TOTAL, QUANTIZED = 11_901_408_320, 11_834_228_736  # paper.md §3.3, derived from the published layer shapes


def test_flux_dev_counts_and_bytes():
    model = meta_flux_transformer()
    assert len(block_linear_names(model)) == 494
    per_tensor = storage_report(model, per_channel_scales=False)
    assert (per_tensor.total_params, per_tensor.quantized_params) == (TOTAL, QUANTIZED)
    rest = 2 * (TOTAL - QUANTIZED)
    assert per_tensor.bf16_bytes == 2 * TOTAL
    assert per_tensor.packed_bytes["2bit"] == QUANTIZED // 4 + 2 * 494 + rest  # every K is a multiple of 4
    assert per_tensor.summary_line() == "storage: bf16=23.80GB 2bit=3.09GB ratio=7.70x trit5=2.50GB ratio=9.52x"
    per_channel = storage_report(model, per_channel_scales=True)
    out_channels = 19 * (2 * 18432 + 8 * 3072 + 2 * 12288 + 2 * 3072) + 38 * (9216 + 12288 + 4 * 3072)
    assert per_channel.packed_bytes["2bit"] - per_tensor.packed_bytes["2bit"] == 2 * (out_channels - 494)
    assert round(per_channel.ratio("trit5"), 2) == 9.49


def test_storage_experiment_writes_metrics_and_the_summary_line(compose, caplog):
    cfg = compose("experiment=storage", "logger=none")
    with caplog.at_level("INFO"):
        out = storage.run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["total_params"] == TOTAL and metrics["quant"] == "absmean"
    assert caplog.records[-1].getMessage() == (
        "storage: bf16=23.80GB 2bit=3.09GB ratio=7.70x trit5=2.50GB ratio=9.52x")


def test_storage_of_the_random_weight_stand_in_is_flux_dev_s(compose):
    """model=flux_dev_random counts on the meta device too (building 12 B random weights for a count would need
    24 GB), with FLUX.1-dev's exact parameters."""
    out = storage.run(compose("experiment=storage", "model=flux_dev_random", "logger=none"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert out.name.startswith("flux-dev-random-absmean-")
    assert metrics["metrics"]["total_params"] == TOTAL and metrics["metrics"]["quantized_params"] == QUANTIZED
