"""The quality gate on the toy world. Fast (default suite): `distill` on a short schedule beats naive absmean on the
toy score by a clear margin. Slow (`pytest -m slow tests/test_toyworld_quality.py`, ~30 min on 2 CPU cores): the
full benchmark (2,400 images per model) against the bar measured in docs/toyworld.md; on the 4.3x larger toy model,
issue 17's bar (training it takes about 100 min on 2 CPU cores, minutes on a GPU; or point FLUX158_TOYWORLD_LARGE
at a trained `<run dir>/model`)."""

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
    assert overall["distill"] >= overall["absmean"] + 0.08, overall  # measured 0.146 vs 0.000 (bf16 0.312), 2026-12-06
    # held-out guidance-direction error: measured 1.20 vs 1.97 (2026-12-06); the full schedule reaches 0.33
    assert direction["distill"] < 0.75 * direction["absmean"], direction
    # the paired comparison was made against these BF16 images
    assert difference["estimate"] == pytest.approx(overall["distill"] - overall["bf16"])


# The floors, from the full benchmark's measured 95 % intervals with the fixed detector (docs/toyworld.md,
# 2026-12-06): the lowest lower ends of distill's retention intervals over four runs (seeds 0, 1, 2 on one build
# machine, seed 0 on another): overall 69.0 %, single object 76 %, two objects 45 %, counting 39 %, colors 65 %,
# less a small margin for float rounding, which differs across machines (seed 0 scored 0.278 on one, 0.285 on the
# other). Position and color attribute have no floor: FP scores 0.13 and 0.06 there, and their retention intervals
# span 48-160 %. Those runs had e2e_direction_weight=0; the default 0.1 kept 77.1-78.7 % over three seeds.
FP_INTERVAL = (0.34, 0.42)  # BF16 overall, measured 0.380 [0.363, 0.397]
DISTILL_RETENTION_FLOOR = 0.66
TAG_RETENTION_FLOORS = {"single_object": 0.72, "two_object": 0.42, "counting": 0.36, "colors": 0.62}
TARGET_RETENTION, TARGET_TAG_RETENTION = 0.90, 0.75  # issue 17's goal: met on the larger model only


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
    retention = full_run["distill"]["retention_vs_bf16"]
    assert retention["overall"]["retention"]["estimate"] >= DISTILL_RETENTION_FLOOR, retention["overall"]
    for tag, floor in TAG_RETENTION_FLOORS.items():
        assert retention[tag]["retention"]["estimate"] >= floor, (tag, retention[tag])


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 17's bar (90 % overall, 75 % per tag) is reached on the 4.3x larger "
                                       "toy model only (test below); docs/toyworld.md has the measured retention")
def test_distill_reaches_the_issue_17_bar(full_run):
    retention = full_run["distill"]["retention_vs_bf16"]
    assert retention["overall"]["retention"]["estimate"] >= TARGET_RETENTION
    tags = [t for t in full_run["bf16"]["metrics"] if t != "overall"]
    assert all(retention[t]["retention"]["estimate"] >= TARGET_TAG_RETENTION for t in tags), retention


# The larger toy model (configs/experiment/toyworld_train_large.yaml, 7.8M parameters): FP 0.519 [0.503, 0.535],
# `distill` 0.505, 97.3 % [94.7, 99.8] of it with every tag's estimate at 88 % or more (2026-12-06,
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
