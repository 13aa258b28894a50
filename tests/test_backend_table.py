"""`auto`'s measured choice between the fused kernels and the unpack baseline (`backend_table`): building a
table from bench timings, the nearest-M rule and its guard-friendly plan, finding a GPU's table, and dispatch."""

from __future__ import annotations

import csv
import json
import math
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from flux158.kernels import backend_table, dispatch, pack_ternary, ternary_linear
from flux158.kernels.backend_table import (
    EVENT_TIMING,
    GRAPH_TIMING,
    BackendTable,
    ShapeChoice,
    choose_from_plan,
    find_table,
    table_slug,
)
from flux158.kernels.bench.table import main as table_main
from flux158.kernels.bench.table import table_from_timings

PERF = Path(__file__).parents[1] / "docs" / "perf"
MS = (1, 16, 256, 1024, 4608)


def _row(method, m, us, k=64, n=32, gpu="NVIDIA H200"):
    return {"gpu": gpu, "shape": "s", "m": str(m), "k": str(k), "n": str(n), "method": method,
            "us_median": "" if us is None else f"{us:.2f}"}


def test_table_keeps_the_faster_backend_and_the_best_of_several_runs():
    rows = [_row("w2a16", 1, 50.0), _row("unpack_bf16", 1, 60.0),  # fused faster
            _row("w2a16", 256, 90.0), _row("unpack_bf16", 256, 80.0),  # unpack faster ...
            _row("w2a16", 256, 70.0),  # ... until a second run of the fused kernel is faster still
            _row("w2a16", 4608, 500.0), _row("unpack_bf16", 4608, 300.0),
            _row("w158a8_int8", 1, 40.0), _row("unpack_int8", 1, None),  # _int_mm refused M = 1: not timed
            _row("w158a8_int8", 4608, 400.0), _row("unpack_int8", 4608, 390.0),
            _row("bf16", 1, 10.0)]  # the BF16 baseline is not a backend
    table = table_from_timings(rows, (9, 0), "test")
    bf16, int8 = table.choices[("bf16", 64, 32)], table.choices[("int8", 64, 32)]
    assert bf16.ms == (1, 256, 4608) and bf16.backends == ("triton", "triton", "unpack")
    assert bf16.us["triton"] == (50.0, 70.0, 500.0) and bf16.us["unpack"] == (60.0, 80.0, 300.0)
    assert int8.backends == ("triton", "unpack") and int8.us["unpack"] == (None, 390.0)
    assert ("fp8", 64, 32) not in table.choices
    assert table.source == "test" and table.timing == EVENT_TIMING and not table.graphed
    with pytest.raises(ValueError, match="one GPU"):
        table_from_timings(rows + [_row("w2a16", 1, 1.0, gpu="NVIDIA A100")], (9, 0), "test")
    with pytest.raises(ValueError, match="one method"):
        table_from_timings(rows + [{**_row("w2a16", 1, 1.0), "timing": GRAPH_TIMING}], (9, 0), "test")
    graphed = table_from_timings([{**r, "timing": GRAPH_TIMING} for r in rows], (9, 0), "test")
    assert graphed.graphed and BackendTable.from_json(graphed.to_json()).graphed


def _nearest_measured(ms, m):
    """Brute force: the measured M closest to m in log2, ties to the larger."""
    return min(ms, key=lambda x: (abs(math.log2(x) - math.log2(m)), -x))


@pytest.mark.parametrize("backends", [("triton", "unpack", "triton", "triton", "unpack"),
                                      ("unpack",) * 5, ("triton", "triton", "unpack", "unpack", "triton")])
def test_plan_sends_each_m_to_the_nearest_measured_m(backends):
    choice = ShapeChoice(MS, backends)
    plan = choice.plan()
    assert plan[-1][0] is None and all(a[1] != b[1] for a, b in pairwise(plan))  # merged runs
    for m in range(1, 10_000):
        assert choose_from_plan(plan, m) == backends[MS.index(_nearest_measured(MS, m))], m
    assert choose_from_plan(plan, 512) == backends[MS.index(1024)]  # 512 is as near 256 as 1024: the larger wins
    assert choose_from_plan(plan, 511) == backends[MS.index(256)]


def test_json_round_trip_and_corrupt_tables(tmp_path):
    table = BackendTable("NVIDIA H200", (9, 0), "test", {("fp8", 3072, 3072): ShapeChoice(
        (1, 4608), ("triton", "unpack"), {"triton": (1.0, 9.0), "unpack": (2.0, 3.0)})})
    path = tmp_path / "t.json"
    path.write_text(table.to_json())
    back = BackendTable.load(path)
    assert back == table and back.choices[("fp8", 3072, 3072)].us == {"triton": (1.0, 9.0), "unpack": (2.0, 3.0)}
    assert choose_from_plan(back.plan("fp8", 3072, 3072), 4000) == "unpack" and back.plan("bf16", 3072, 3072) == ()
    def edited(key, value):
        data = json.loads(table.to_json())
        data["choices"][0][key] = value
        return json.dumps(data)

    for bad in ('{"format": "other"}', "not json", edited("backend", ["triton", "cublas"]), edited("m", [4608, 1]),
                edited("m", [1])):
        path.write_text(bad)
        with pytest.raises(ValueError, match="not a kernel backend table"):
            BackendTable.load(path)


def test_find_table_by_timing_then_name_then_capability_and_the_override(tmp_path, monkeypatch):
    monkeypatch.delenv(backend_table.TABLE_ENV, raising=False)
    (tmp_path / "nvidia_h200.json").write_text(BackendTable("NVIDIA H200", (9, 0), "h200 eager", {}).to_json())
    assert table_slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"
    assert find_table("NVIDIA H200", (9, 0), tables_dir=tmp_path)[0].source == "h200 eager"
    table, why = find_table("NVIDIA H100 80GB HBM3", (9, 0), tables_dir=tmp_path)
    assert table.gpu == "NVIDIA H200" and "same sm_90" in why
    assert find_table("NVIDIA A100-SXM4-80GB", (8, 0), tables_dir=tmp_path)[0] is None
    # graphed calls fall back to eager timings until a graph-timed table exists, which then wins even across GPUs
    table, why = find_table("NVIDIA H100 80GB HBM3", (9, 0), graphed=True, tables_dir=tmp_path)
    assert table.source == "h200 eager" and "no table timed as graphed calls" in why
    (tmp_path / "h200_graph.json").write_text(
        BackendTable("NVIDIA H200", (9, 0), "h200 graph", {}, GRAPH_TIMING).to_json())
    assert find_table("NVIDIA H100 80GB HBM3", (9, 0), graphed=True, tables_dir=tmp_path)[0].source == "h200 graph"
    assert find_table("NVIDIA H200", (9, 0), tables_dir=tmp_path)[0].source == "h200 eager"
    # the override replaces the shipped tables; it may list an eager and a graph-timed file
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.json").write_text(BackendTable("NVIDIA A100-SXM4-80GB", (8, 0), "my eager", {}).to_json())
    (mine / "b.json").write_text(BackendTable("NVIDIA A100-SXM4-80GB", (8, 0), "my graph", {}, GRAPH_TIMING).to_json())
    monkeypatch.setenv(backend_table.TABLE_ENV, f"{mine / 'a.json'}:{mine / 'b.json'}")
    assert find_table("NVIDIA A100-SXM4-80GB", (8, 0), tables_dir=tmp_path)[0].source == "my eager"
    assert find_table("NVIDIA A100-SXM4-80GB", (8, 0), graphed=True, tables_dir=tmp_path)[0].source == "my graph"
    assert find_table("NVIDIA H200", (9, 0), tables_dir=tmp_path)[0] is None  # shipped tables are not consulted


def test_shipped_h200_table_is_rebuilt_from_the_committed_timings(tmp_path):
    runs = [PERF / "2026-12-04-h200" / "kernels_bench.csv"]  # the newest H200 run (its table: same directory)
    assert all(p.exists() for p in runs), "docs/perf holds the H200 bench run the shipped table comes from"
    out = tmp_path / "h200.json"
    assert table_main([str(p) for p in runs] + ["--capability", "9.0", "--out", str(out)]) == 0
    shipped = BackendTable.load(backend_table.TABLES_DIR / "nvidia_h200.json")
    assert BackendTable.load(out).choices == shipped.choices and shipped.capability == (9, 0)
    # spot check against the CSVs directly: the fastest of each method at M = 4608 on mlp_up, over both runs
    rows = [r for p in runs for r in csv.DictReader(open(p))]

    def fastest(method):
        return min(float(r["us_median"]) for r in rows
                   if (r["shape"], r["m"], r["method"]) == ("mlp_up", "4608", method) and r["us_median"])

    unpack_wins = fastest("unpack_fp8") < fastest("w158a8_fp8")
    assert unpack_wins == (choose_from_plan(shipped.plan("fp8", 3072, 12288), 4608) == "unpack")


@pytest.fixture
def measured_gpu(monkeypatch):
    """Pretend the kernels serve CPU tensors and that the GPU's table says: unpack up to M = 7, fused above (8 is
    equally near 4 and 16 on a log scale, and ties go to the larger M)."""
    from flux158.kernels import ops  # noqa: F401  (registers torch.ops.flux158)

    table = BackendTable("test GPU", (9, 0), "test", {("bf16", 256, 48): ShapeChoice((4, 16), ("unpack", "triton"))})
    monkeypatch.setattr(dispatch, "kernel_available", lambda x, act=None: True)
    monkeypatch.setattr(dispatch, "table_for_device", lambda index, graphed: table)
    calls = []
    for name in ("ternary_mm", "ternary_mm_unpacked"):
        op = getattr(torch.ops.flux158, name)
        monkeypatch.setattr(torch.ops.flux158, name,
                            lambda *a, _n=name, _op=op: calls.append(_n) or _op(*a), raising=False)
    return calls


@pytest.mark.skipif(torch.cuda.is_available(), reason="drives the interpreter on CPU")
def test_auto_runs_the_backend_the_table_measured_faster(measured_gpu):
    g = torch.Generator().manual_seed(0)
    packed = pack_ternary(torch.randint(-1, 2, (48, 256), generator=g, dtype=torch.int8))
    scale = torch.rand(48, 1, generator=g) + 0.5
    for m, expected in ((2, "ternary_mm_unpacked"), (7, "ternary_mm_unpacked"), (8, "ternary_mm"),
                        (40, "ternary_mm")):
        x = torch.randn(m, 256, generator=g).to(torch.bfloat16)
        y = ternary_linear(x, packed, scale, None, 256)
        assert measured_gpu[-1] == expected, m
        assert torch.allclose(y.float(), ternary_linear(x, packed, scale, None, 256, backend="reference").float(),
                              rtol=0.02, atol=0.05)
    measured_gpu.clear()
    other = pack_ternary(torch.randint(-1, 2, (40, 256), generator=g, dtype=torch.int8))  # a shape not measured
    ternary_linear(torch.randn(2, 256, generator=g).to(torch.bfloat16), other, scale[:40], None, 256)
    assert measured_gpu == ["ternary_mm"]


def test_auto_choice_traces_without_graph_breaks_and_guards_on_m(monkeypatch):
    table = BackendTable("test GPU", (9, 0), "test", {("int8", 256, 48): ShapeChoice((4, 16), ("unpack", "triton"))})
    looked_up = []
    monkeypatch.setattr(dispatch, "table_for_device", lambda index, graphed: looked_up.append(graphed) or table)

    def f(x):
        return x * (2 if dispatch.auto_backend(x, "int8", 256, 48) == "unpack" else 3)

    assert f(torch.ones(2, 256))[0, 0].item() == 2 and looked_up == [False]  # eager: the eager-timed table
    for dynamic in (False, True):
        looked_up.clear()
        torch._dynamo.reset()
        compiled = torch.compile(f, backend="eager", fullgraph=True, dynamic=dynamic)
        assert [compiled(torch.ones(m, 256))[0, 0].item() for m in (2, 5, 20, 3)] == [2, 2, 3, 2]
        assert looked_up and all(looked_up)  # read while tracing, not per call, as graph-timed calls


def test_bench_replaces_its_table_whole_with_the_cells_timed_so_far(tmp_path, monkeypatch):
    from flux158.kernels.bench.__main__ import _write_table

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    path = tmp_path / "t.json"
    path.write_text("an older table")
    _write_table(path, [_row("w2a16", 1, 50.0), _row("unpack_bf16", 1, 60.0)], "first shape")
    first = BackendTable.load(path)
    assert first.source == "first shape" and first.choices[("bf16", 64, 32)].backends == ("triton",)
    _write_table(path, [_row("w2a16", 1, 50.0), _row("unpack_bf16", 1, 60.0), _row("w2a16", 1, 9.0, k=128),
                        _row("unpack_bf16", 1, 5.0, k=128)], "two shapes")
    assert BackendTable.load(path).choices[("bf16", 128, 32)].backends == ("unpack",)
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]  # no temporary left behind
