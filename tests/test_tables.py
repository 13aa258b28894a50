"""The tables stage: Tables 1-3, Fig. 2 and the method comparison from hand-made metrics.json fixtures, against
expected Markdown and CSV with the differences from the paper worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flux158.report.records import collect, results_from_json
from flux158.report.tables import (
    benchmark_table,
    efficiency_table,
    latency_rows,
    latency_table,
    load_paper_numbers,
    methods_table,
    off_protocol_table,
    tags_table,
    to_markdown,
    write_table,
)

PAPER = {"t2i_compbench": {"columns": ["average", "color"], "labels": ["Avg.", "Color"],
                           "rows": {"FLUX": [0.5876, 0.7529], "1.58-bit FLUX": [0.5812, 0.7390]},
                           "reference": {"bf16": "FLUX", "quantized": "1.58-bit FLUX"}},
         "efficiency": {"storage_ratio": 7.7, "memory_ratio": 5.1}}


def _evaluate(model, quant, benchmark, metrics, config_hash="aaaa1111", **extra):
    """A paper-protocol evaluation unless `extra` says otherwise."""
    return {"model": model, "quant": quant, "benchmark": benchmark, "config_hash": config_hash, "gpu": "NVIDIA H100",
            "metrics": metrics, "paper_protocol": True, "protocol_deviations": [], "num_images": 24000, **extra}


def _latency(gpu, rows, smoke=False):
    return {"model": "flux_dev", "quant": "latency", "benchmark": "latency", "gpu": gpu, "smoke": smoke,
            "metrics": {"rows": rows}}


def _row(variant, resolution, total_ms=None, peak_gib=None, compiled=False, error=None, graph=False):
    return {"variant": variant, "compiled": compiled, "cuda_graph": graph, "resolution": resolution,
            "total_ms": total_ms, "per_step_ms": None if total_ms is None else total_ms / 50, "peak_gib": peak_gib,
            "error": error}


def _write(root: Path, rel: str, obj) -> None:
    path = root / rel / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_latency_cell_measured_twice_takes_the_latest_measurement_whatever_the_file_order(tmp_path):
    newer = _latency("NVIDIA H200", [_row("bf16", 1024, 14_000, 23.5)]) | {"measured_at": "2026-12-05T10:00:00+00:00"}
    older = _latency("NVIDIA H200", [_row("bf16", 1024, 16_000, 23.5)]) | {"measured_at": "2026-12-04T10:00:00+00:00"}
    for order in ([newer, older], [older, newer]):
        results = results_from_json([(obj, f"latency/flux_dev-nvidia_h200-{i}") for i, obj in enumerate(order)])
        assert latency_rows(results)["total_s"].tolist() == [14.0]


def test_table_1_puts_our_rows_and_their_differences_beside_the_paper(tmp_path):
    _write(tmp_path, "evaluate/t2i_compbench/flux_dev-bf16-1", _evaluate(
        "flux_dev", "bf16", "t2i_compbench", {"average": 0.6, "color": 0.75}))
    # a quantized run with one category unscored: no average, so its difference is missing too
    _write(tmp_path, "evaluate/t2i_compbench/flux_dev-distill-2", _evaluate(
        "flux_dev", "distill", "t2i_compbench", {"color": 0.74}))
    _write(tmp_path, "evaluate/geneval/flux_dev-bf16-3", _evaluate("flux_dev", "bf16", "geneval", {"overall": 0.6}))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "metrics.json").write_text('{"something": "else"}')  # not a stage's: skipped
    results = collect(tmp_path)
    assert len(results) == 3
    table = benchmark_table(results, "t2i_compbench", PAPER)
    # 0.6 - 0.5876 = +0.0124, 0.75 - 0.7529 = -0.0029; 0.74 - 0.7390 = +0.0010
    assert to_markdown(table) == (
        "| source             | model         | quant   | images   | Avg.    | Color   |\n"
        "|:-------------------|:--------------|:--------|:---------|:--------|:--------|\n"
        "| paper              | FLUX          |         | —        | 0.5876  | 0.7529  |\n"
        "| paper              | 1.58-bit FLUX |         | —        | 0.5812  | 0.7390  |\n"
        "| ours               | flux_dev      | bf16    | 24000    | 0.6000  | 0.7500  |\n"
        "| Δ vs FLUX          | flux_dev      | bf16    | —        | +0.0124 | -0.0029 |\n"
        "| ours               | flux_dev      | distill | 24000    | —       | 0.7400  |\n"
        "| Δ vs 1.58-bit FLUX | flux_dev      | distill | —        | —       | +0.0010 |\n")
    paths = write_table(table, tmp_path / "tables", "table1", "Table 1")
    assert paths["csv"].read_text() == (
        "source,model,quant,images,Avg.,Color\n"
        "paper,FLUX,,,0.5876,0.7529\n"
        "paper,1.58-bit FLUX,,,0.5812,0.739\n"
        "ours,flux_dev,bf16,24000,0.6,0.75\n"
        "Δ vs FLUX,flux_dev,bf16,,0.0124,-0.0029\n"
        "ours,flux_dev,distill,24000,,0.74\n"
        "Δ vs 1.58-bit FLUX,flux_dev,distill,,,0.001\n")
    tex = paths["tex"].read_text()
    assert r"$\Delta$ vs FLUX & flux\_dev & bf16 & -- & +0.0124 & -0.0029 \\" in tex and r"\caption{Table 1}" in tex


def test_only_paper_protocol_runs_stand_beside_the_paper(tmp_path):
    small = ["benchmark.limit_per_group=1 (paper: None)", "model.name='tiny' (paper: 'flux-dev')"]
    results = results_from_json([
        (_evaluate("flux_dev", "bf16", "t2i_compbench", {"average": 0.6, "color": 0.75}), "a"),
        (_evaluate("tiny", "bf16", "t2i_compbench", {"average": 0.1, "color": 0.2}, paper_protocol=False,
                   protocol_deviations=small, num_images=80), "b"),
        ({k: v for k, v in _evaluate("flux_dev", "twn", "t2i_compbench", {"average": 0.3, "color": 0.4}).items()
          if k not in ("paper_protocol", "protocol_deviations")}, "c"),  # written before the protocol check
    ])
    table = benchmark_table(results, "t2i_compbench", PAPER)
    assert table["model"].tolist() == ["FLUX", "1.58-bit FLUX", "flux_dev", "flux_dev"]
    assert table["quant"].tolist()[2:] == ["bf16", "bf16"]  # ours and its difference; neither other run
    other = off_protocol_table(results, "t2i_compbench", PAPER)
    assert other.astype(object).where(other.notna(), None).values.tolist() == [
        ["flux_dev", "twn", 24000, 0.3, 0.4, "not recorded (evaluated before protocol checks: run evaluate again)"],
        ["tiny", "bf16", 80, 0.1, 0.2, "; ".join(small)]]


def test_the_paper_data_file_is_self_consistent():
    paper = load_paper_numbers()
    t2i = paper["t2i_compbench"]
    for name, values in t2i["rows"].items():  # Avg. is the plain mean of the 8 categories (to the 4th decimal)
        assert values[0] == pytest.approx(sum(values[1:]) / 8, abs=6e-5), name
    assert t2i["rows"]["FLUX"][0] == 0.5876 and t2i["rows"]["1.58-bit FLUX"][0] == 0.5812
    geneval = paper["geneval"]
    for name, values in geneval["rows"].items():  # Overall is the mean of the 6 tasks, from unrounded scores
        if None not in values:
            assert values[0] == pytest.approx(sum(values[1:]) / 6, abs=0.01), name
    assert (geneval["rows"]["FLUX"][0], paper["efficiency"]["storage_ratio"]) == (0.66, 7.7)


def test_table_3_merges_gpus_keeps_oom_and_a_rerun_replaces_its_cell(tmp_path):
    results = results_from_json([
        (_latency("NVIDIA H100", [_row("bf16", 1024, 20_000, 23.5), _row("w2a16", 1024, error="OOM")]), "a"),
        (_latency("NVIDIA H200", [_row("bf16", 1024, 15_000, 23.5), _row("w2a16", 1024, 18_000, 4.0),
                                  _row("w2a16", 1024, 12_000, 4.0, compiled=True),
                                  _row("w2a16", 1024, 9_000, 4.1, compiled=True, graph=True)]), "b"),
        (_latency("NVIDIA H100", [_row("w2a16", 1024, 25_000, 4.5)]), "c"),  # the later H100 run
        (_latency("cpu", [_row("bf16", 64, 1_500)], smoke=True), "d"),
    ])
    assert to_markdown(latency_table(results), digits=1) == (
        "| variant   | mode                  | resolution   | NVIDIA H100   | NVIDIA H200   | cpu (CPU smoke)   |\n"
        "|:----------|:----------------------|:-------------|:--------------|:--------------|:------------------|\n"
        "| bf16      | eager                 | 64           | —             | —             | 1.5               |\n"
        "| bf16      | eager                 | 1024         | 20.0          | 15.0          | —                 |\n"
        "| w2a16     | compiled              | 1024         | —             | 12.0          | —                 |\n"
        "| w2a16     | compiled + CUDA graph | 1024         | —             | 9.0           | —                 |\n"
        "| w2a16     | eager                 | 1024         | 25.0          | 18.0          | —                 |\n")
    oom_only = results_from_json([(_latency("NVIDIA A10", [_row("bf16", 1024, error="OOM")]), "e")])
    assert latency_table(oom_only).iloc[0]["NVIDIA A10"] == "OOM"
    # Fig. 2 memory: eager peaks at the largest resolution; 23.5 / 4.5 on the H100, 23.5 / 4.0 on the H200
    memory = efficiency_table(results, PAPER)
    assert memory["ratio"].tolist() == pytest.approx([23.5 / 4.5, 23.5 / 4.0])
    assert memory["where"].tolist() == ["NVIDIA H100", "NVIDIA H200"] and memory["paper_ratio"].tolist() == [5.1] * 2


def test_fig_2_shows_whole_pipeline_memory_beside_the_transformers(tmp_path):
    from flux158.report.figures import efficiency_figure

    def whole(variant, memory, peak, compiled=False):
        return {"variant": variant, "compiled": compiled, "cuda_graph": False, "memory_mode": memory,
                "resolution": 1024, "end_to_end_ms": 9000.0, "pipeline_peak_gib": peak}

    run = _latency("NVIDIA H200", [_row("bf16", 1024, 6000, 22.5), _row("w2a16", 1024, 6100, 3.3)])
    run["metrics"]["pipeline"] = [whole("bf16", "resident", 33.0), whole("w2a16", "resident", 14.0),
                                  whole("bf16", "cached_embeddings", 24.0), whole("w2a16", "cached_embeddings", 5.0),
                                  whole("w2a16", "cached_embeddings", 1.0, compiled=True)]  # eager rows only
    table = efficiency_table(results_from_json([(run, "l")]), PAPER)
    assert table["measure"].tolist() == ["transformer memory (eager, 1024px)",
                                         "pipeline memory (cached_embeddings, eager, 1024px)",
                                         "pipeline memory (resident, eager, 1024px)"]
    assert table["ratio"].tolist() == pytest.approx([22.5 / 3.3, 24.0 / 5.0, 33.0 / 14.0])
    assert table["ternary_gb"].tolist() == pytest.approx([3.3 * 2**30 / 1e9, 5.0 * 2**30 / 1e9, 14.0 * 2**30 / 1e9])
    assert efficiency_figure(table, tmp_path / "fig2.png").exists()


def test_fig_2_storage_and_the_method_table_join_quantize_evaluate_and_fidelity(tmp_path):
    from flux158.report.figures import efficiency_figure

    storage = {"model": "flux_dev", "quant": "absmean", "benchmark": "storage",
               "metrics": {"bf16_bytes": 23_800_000_000, "packed_bytes": {"2bit": 3_090_000_000,
                                                                         "trit5": 2_500_000_000}}}
    quantize = {"model": "flux_dev", "quant": "absmean", "method": "absmean", "layers": {},
                "metrics": {"ratio_2bit": 7.7, "weight_sqnr_db_mean": 9.5, "output_rel_mse": 0.25}}
    results = results_from_json([
        (storage, "s"), (quantize, "q"),
        (_evaluate("flux_dev", "absmean", "geneval", {"overall": 0.5},
                   fidelity_to_bf16={"psnr": 20.0, "ssim": 0.8, "lpips": 0.3, "clip_image": 0.9}), "e1"),
        (_evaluate("flux_dev", "bf16", "geneval", {"overall": 0.66}), "e2")])
    table = efficiency_table(results, PAPER)
    assert table["ratio"].tolist() == pytest.approx([23.8 / 3.09, 23.8 / 2.5])
    png = efficiency_figure(table, tmp_path / "fig2.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    methods = methods_table(results)
    picked = methods[["quant", "method", "score", "psnr", "lpips", "storage_ratio", "output_rel_mse"]]
    assert picked.astype(object).where(picked.notna(), None).values.tolist() == [
        ["bf16", "bf16", 0.66, None, None, None, None], ["absmean", "absmean", 0.5, 20.0, 0.3, 7.7, 0.25]]


def test_method_table_tells_two_runs_of_one_method_apart_and_carries_their_intervals():
    def quantize(seed, seconds, mse):
        return {"model": "toyworld", "quant": "distill", "method": "distill", "layers": {},
                "metrics": {"ratio_2bit": 7.1, "weight_sqnr_db_mean": 9.0, "output_rel_mse": mse,
                            "seconds": seconds}}

    def settings(seed):
        return {"_target_": "flux158.quant.TernaryConfig", "method": "distill",
                "distill": {"_target_": "x", "seed": seed, "block_steps": 2000}}

    kept = {"overall": {"retention": {"estimate": 0.9, "low": 0.8, "high": 1.0},
                        "difference": {"estimate": -0.05, "low": -0.1, "high": 0.0}}}
    results = results_from_json([
        (quantize(1, 50.0, 0.02), "/o/quantize/toyworld-distill-bbbb/metrics.json"),
        (quantize(0, 40.0, 0.01), "/o/quantize/toyworld-distill-aaaa/metrics.json"),
        (_evaluate("toyworld", "bf16", "toyworld", {"counting": 0.4, "overall": 0.5}, "h0",
                   intervals={"counting": [0.3, 0.5], "overall": [0.48, 0.52], "level": 0.95}), "e0"),
        (_evaluate("toyworld", "distill", "toyworld", {"counting": 0.3, "overall": 0.45}, "h1",
                   quant_settings=settings(0), quantize_dir="/o/quantize/toyworld-distill-aaaa",
                   intervals={"counting": [0.2, 0.4], "overall": [0.43, 0.47]}, retention_vs_bf16=kept), "e1"),
        (_evaluate("toyworld", "distill", "toyworld", {"overall": 0.40}, "h2",
                   quant_settings=settings(1), quantize_dir="/o/quantize/toyworld-distill-bbbb"), "e2")])
    methods = methods_table(results)
    picked = methods[["quant", "score", "score_low", "score_high", "retention", "retention_low", "output_rel_mse",
                      "quantize_s"]]
    assert picked.astype(object).where(picked.notna(), None).values.tolist() == [
        ["bf16", 0.5, 0.48, 0.52, None, None, None, None],
        ["distill (seed=0)", 0.45, 0.43, 0.47, 0.9, 0.8, 0.01, 40.0],
        ["distill (seed=1)", 0.40, None, None, None, None, 0.02, 50.0]]
    tags = tags_table(results)
    assert tags[["quant", "tag", "score", "score_low", "retention"]].astype(object).where(
        tags.notna(), None).values.tolist() == [
        ["bf16", "counting", 0.4, 0.3, None], ["bf16", "overall", 0.5, 0.48, None],
        ["distill", "counting", 0.3, 0.2, None], ["distill", "overall", 0.45, 0.43, 0.9]]


def test_experiment_paper_tables_from_disk_and_from_wandb(compose, tmp_path, monkeypatch):
    from flux158.experiments import tables, tracking

    out_dir = tmp_path / "outputs"
    _write(out_dir, "evaluate/t2i_compbench/flux_dev-bf16-1", _evaluate(
        "flux_dev", "bf16", "t2i_compbench", {"average": 0.6, "color": 0.75}))
    _write(out_dir, "latency/flux_dev-cuda", _latency("NVIDIA H100", [_row("bf16", 1024, 20_000, 23.5)]))
    _write(out_dir, "evaluate/t2i_compbench/flux-dev-random-distill-2", _evaluate(  # a rehearsal's noise images
        "flux-dev-random", "distill", "t2i_compbench", {"average": 0.1, "color": 0.2}, random_weights=True))
    cfg = compose("experiment=paper_tables", "logger=none")
    out = tables.run(cfg)
    assert "random" not in (out / "index.md").read_text()  # refused: no table shows a random-weight model
    names = sorted(p.name for p in out.iterdir())
    for stem in ("table1_t2i_compbench", "table2_geneval", "table3_latency", "fig2_efficiency", "methods"):
        assert {f"{stem}.md", f"{stem}.tex", f"{stem}.csv"} <= set(names)
    assert "fig2_efficiency.png" in names and "index.md" in names
    (delta,) = [line for line in (out / "index.md").read_text().splitlines() if line.startswith("| Δ vs FLUX")]
    assert delta.split("|")[5:7] == [" +0.0124 ", " -0.0029 "]  # Avg. and Color of the full Table 1
    assert (out / "table1_t2i_compbench_other_runs.md").exists()
    assert tables.run(cfg) == out  # a rerun does not read its own outputs as results

    class Artifact:
        type, name = "results", "metrics-t2i"

        def download(self):
            return str(out_dir / "evaluate" / "t2i_compbench" / "flux_dev-bf16-1")

    class Run:
        id = "abc123"

        def logged_artifacts(self):
            return [Artifact(), Artifact()]  # the same artifact twice is read once

    class Api:
        def runs(self, path):
            assert path == "me/flux158"
            return [Run()]

    found = tracking.results_from_wandb("me/flux158", api=Api())
    assert len(found) == 1 and found[0][1] == "wandb:me/flux158/abc123/metrics-t2i"
    monkeypatch.setattr(tracking, "results_from_wandb", lambda path: found)
    wandb_out = tables.run(compose("experiment=paper_tables", "logger=none", "tables.source=wandb",
                                   "tables.wandb_path=me/flux158", f"tables.out_dir={tmp_path / 'from-wandb'}"))
    assert "+0.0124" in (wandb_out / "table1_t2i_compbench.md").read_text()
    assert "(no results yet)" in (wandb_out / "table3_latency.md").read_text()


def test_grids_pair_only_images_made_with_the_same_benchmark_sampler_and_seeds(compose, tmp_path):
    """A BF16 run at 4 steps and one at 50 share model and benchmark but not their images: the quantized run made
    at 50 steps is put beside the 50-step BF16 images only."""
    from PIL import Image

    from flux158.experiments import tables

    out_dir = tmp_path / "outputs"
    shades = {"bf16-4steps": 10, "bf16-50steps": 120, "twn-50steps": 200}
    for name, shade in shades.items():
        images = tmp_path / "images" / name
        images.mkdir(parents=True)
        Image.new("RGB", (16, 16), (shade,) * 3).save(images / "0.png")
        quant, steps = name.split("-")
        folder = out_dir / "evaluate" / "geneval" / name
        _write(out_dir, f"evaluate/geneval/{name}", _evaluate(
            "flux_dev", quant, "geneval", {"overall": 0.5}, config_hash=name, images_dir=str(images),
            pairing_key=steps))
        (folder / "results.jsonl").write_text(json.dumps({"prompt": "a cat", "filename": "0.png"}) + "\n")
    out = tables.run(compose("experiment=paper_tables", "logger=none", "tables.grid_prompts=1"))
    (grid,) = sorted((out / "grids").iterdir())
    assert grid.name == "flux_dev-geneval-50steps.png"
    shades_in_grid = {int(v) for v in np.unique(np.array(Image.open(grid))[..., 0])}
    assert {120, 200} <= shades_in_grid and 10 not in shades_in_grid
