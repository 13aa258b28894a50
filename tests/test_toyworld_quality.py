"""The quality gate on the toy world (slow: ~15 min on 2 CPU cores): calibrated ternary methods keep the picture,
naive absmean collapses. Run with `pytest -m slow tests/test_toyworld_quality.py`."""

import json

import pytest

from conftest import run_cli

FP_OVERALL = 0.463  # the committed toy model's toy-GenEval score (measured; asserted below too)


@pytest.mark.slow
def test_distill_keeps_the_toy_world_where_absmean_collapses(tmp_path):
    env = {"FLUX158_OUTPUT_DIR": str(tmp_path)}
    proc = run_cli("-m", "quant=bf16,absmean,gptq,distill", "logger=none", env=env, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    overall, output_error = {}, {}
    for quant in ("bf16", "absmean", "gptq", "distill"):
        (metrics,) = (tmp_path / "evaluate" / "toyworld").glob(f"toyworld-{quant}-*/metrics.json")
        overall[quant] = json.loads(metrics.read_text())["metrics"]["overall"]
        if quant != "bf16":
            (qmetrics,) = (tmp_path / "quantize").glob(f"toyworld-{quant}-*/metrics.json")
            output_error[quant] = json.loads(qmetrics.read_text())["metrics"]["output_rel_mse"]
    assert overall["bf16"] == pytest.approx(FP_OVERALL, abs=0.01)
    assert overall["absmean"] < 0.05  # noise
    assert output_error["distill"] < 0.5 * output_error["gptq"] and output_error["gptq"] < 0.2 * output_error["absmean"]
    # The toy score of the same distillation moves with float rounding order: 0.366 before the kernels' reference
    # path applied the scale after the matmul (49fa614), 0.321 after, at the same held-out output error (0.019).
    # The gate sits below that spread; the output-error checks above are the sharp ones.
    assert overall["distill"] >= 0.65 * overall["bf16"], overall
