"""The quality gate on the toy world. Fast (default suite): `distill` on a short schedule beats naive absmean on the
toy score by a clear margin. Slow (`pytest -m slow tests/test_toyworld_quality.py`): the full benchmark (2,400 images
per model) on the committed model against issue 17's bar and the floors measured in docs/toyworld.md (~35 min on 2
CPU cores); the same bar on the 7.8M toy model of the scale comparison (training it takes about 100 min on 2 CPU
cores, minutes on a GPU; or point FLUX158_TOYWORLD_LARGE at a trained `<run dir>/model`)."""

import json
import os
from pathlib import Path

import pytest

from conftest import run_cli
from flux158.experiments import calibrate, evaluate, generate, quantize

SHORT = ("logger=none", "benchmark.per_tag=8", "benchmark.samples_per_prompt=1", "calib.num_prompts=32",
         "calib.heldout=8", "calib.states_per_prompt=2")
SHORT_DISTILL = ("quant.config.distill.block_steps=100", "quant.config.distill.e2e_steps=50")


def test_short_schedule_distill_beats_absmean_on_the_toy_score(compose):
    overall, direction = {}, {}
    for quant in ("bf16", "absmean", "distill"):
        cfg = compose(*SHORT, f"quant={quant}", *(SHORT_DISTILL if quant == "distill" else ()))
        calibrate.run(cfg)
        quantized = quantize.run(cfg)
        if quantized is not None:  # the toy world is a CFG model: its held-out guidance direction is scored
            summary = json.loads((quantized / "metrics.json").read_text())["metrics"]
            direction[quant] = summary["output_direction_rel_mse"]
        generate.run(cfg)
        metrics = json.loads((evaluate.run(cfg) / "metrics.json").read_text())
        overall[quant] = metrics["metrics"]["overall"]
        if quant == "distill":
            difference = metrics["retention_vs_bf16"]["overall"]["difference"]
    assert overall["absmean"] < 0.05, overall  # noise, on 48 images
    # measured 0.208 vs 0.000 (bf16 0.438) on the committed 4.1M model, 2026-12-07 (0.146 on the 1.8M one before)
    assert overall["distill"] >= overall["absmean"] + 0.08, overall
    # held-out guidance-direction error: measured 1.02 vs 2.27 (2026-12-07); the full schedule reaches 0.24
    assert direction["distill"] < 0.75 * direction["absmean"], direction
    # the paired comparison was made against these BF16 images
    assert difference["estimate"] == pytest.approx(overall["distill"] - overall["bf16"])


# The committed model (4.1M parameters, since 2026-12-07), full benchmark, two quantizer seeds of `distill` (defaults,
# 2026-12-07, docs/toyworld.md): FP 0.510 [0.494, 0.527]; `distill` keeps 97.1 % [94.0, 100.3] and 97.6 % [94.4,
# 100.8]. The floors are the lower ends of the two seeds' paired retention intervals, less about 3 points for float
# rounding, which differs across machines: single object 98.8 %, two objects 87.5 %, counting 85.2 %, colors 93.5 %,
# position 69.7 %, color attribute 47.5 % (FP draws color attributes right in 31 of 400 images, so one image moves
# that tag's retention by 3 points).
FP_INTERVAL = (0.47, 0.55)
DISTILL_RETENTION_FLOOR = 0.91
TAG_RETENTION_FLOORS = {"single_object": 0.95, "two_object": 0.84, "counting": 0.82, "colors": 0.90,
                        "position": 0.66, "color_attr": 0.44}
GPTQ_RETENTION_FLOOR = 0.70  # measured 77.9 % [74.2, 81.6]
# Issue 17's bar: 90 % overall and 75 % on every tag. The tag half is asserted where FP scores at least 0.2 (80 of
# 400 images), i.e. everywhere but color attribute; there the two seeds kept 74 % and 90 % (pooled 82 %).
TARGET_RETENTION, TARGET_TAG_RETENTION, TAG_MIN_FP = 0.90, 0.75, 0.2


def _full_run(tmp_path, quants: str, *overrides: str) -> dict[str, dict]:
    env = {"FLUX158_OUTPUT_DIR": str(tmp_path)}
    proc = run_cli("-m", f"quant={quants}", "logger=none", *overrides, env=env, timeout=3 * 5400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = {}
    for quant in quants.split(","):
        (path,) = (tmp_path / "evaluate" / "toyworld").glob(f"toyworld-{quant}-*/metrics.json")
        found[quant] = json.loads(path.read_text())
        if quant != "bf16":
            (qpath,) = (tmp_path / "quantize").glob(f"toyworld-{quant}-*/metrics.json")
            found[quant]["quantize"] = json.loads(qpath.read_text())["metrics"]
    return found


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return _full_run(tmp_path_factory.mktemp("toy"), "bf16,absmean,gptq,distill")


@pytest.mark.slow
def test_distill_keeps_the_toy_world_where_absmean_collapses(full_run):
    fp = full_run["bf16"]
    assert FP_INTERVAL[0] <= fp["metrics"]["overall"] <= FP_INTERVAL[1]
    low, high = fp["intervals"]["overall"]
    assert high - low <= 0.04  # the benchmark's resolution: half-width <= 0.02
    assert full_run["absmean"]["metrics"]["overall"] < 0.05
    error = {q: full_run[q]["quantize"]["output_rel_mse"] for q in ("absmean", "gptq", "distill")}
    assert error["distill"] < 0.5 * error["gptq"] and error["gptq"] < 0.2 * error["absmean"]
    assert full_run["gptq"]["retention_vs_bf16"]["overall"]["retention"]["estimate"] >= GPTQ_RETENTION_FLOOR
    retention = full_run["distill"]["retention_vs_bf16"]
    assert retention["overall"]["retention"]["estimate"] >= DISTILL_RETENTION_FLOOR, retention["overall"]
    for tag, floor in TAG_RETENTION_FLOORS.items():
        assert retention[tag]["retention"]["estimate"] >= floor, (tag, retention[tag])


@pytest.mark.slow
def test_distill_reaches_the_issue_17_bar(full_run):
    retention = full_run["distill"]["retention_vs_bf16"]
    assert retention["overall"]["retention"]["estimate"] >= TARGET_RETENTION
    fp = full_run["bf16"]["metrics"]
    measurable = [t for t in fp if t != "overall" and fp[t] >= TAG_MIN_FP]
    assert len(measurable) >= 4, fp  # FP measured: all but color attribute
    assert all(retention[t]["retention"]["estimate"] >= TARGET_TAG_RETENTION for t in measurable), retention


# The 7.8M toy model (configs/experiment/toyworld_train_large.yaml): FP 0.519 [0.503, 0.535], `distill` with
# today's defaults 0.503, 96.9 % [94.2, 99.8] of it with every tag's estimate at 80 % or more (2026-12-06,
# docs/toyworld.md). A model trained elsewhere (a GPU, another seed of float rounding) scores differently, hence
# the wide FP range.
LARGE_FP_RANGE = (0.45, 0.60)


@pytest.fixture(scope="module")
def large_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_large")
    model = os.environ.get("FLUX158_TOYWORLD_LARGE")
    if model is None:
        proc = run_cli("experiment=toyworld_train_large", "logger=none", env={"FLUX158_OUTPUT_DIR": str(root)},
                       timeout=4 * 3600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        (done,) = (root / "toyworld_train").glob("*/.done")
        model = str(done.parent / "model")
    assert Path(model, "model_index.json").exists(), f"not a trained toy-world pipeline: {model}"
    return _full_run(root, "bf16,distill", "experiment=toyworld", f"model.pretrained={model}")


@pytest.mark.slow
def test_distill_reaches_the_issue_17_bar_on_the_larger_toy_model(large_run):
    fp = large_run["bf16"]["metrics"]["overall"]
    assert LARGE_FP_RANGE[0] <= fp <= LARGE_FP_RANGE[1]
    retention = large_run["distill"]["retention_vs_bf16"]
    assert retention["overall"]["retention"]["estimate"] >= TARGET_RETENTION, retention["overall"]
    tags = [t for t in large_run["bf16"]["metrics"] if t != "overall"]
    assert all(retention[t]["retention"]["estimate"] >= TARGET_TAG_RETENTION for t in tags), retention
