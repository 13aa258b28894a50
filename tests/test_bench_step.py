"""`python -m flux158.kernels.bench.step`: one FLUX.1-dev step's block linears, and their summed bench times."""

from __future__ import annotations

import pytest

from flux158.kernels.bench.roofline import GpuPeaks
from flux158.kernels.bench.shapes import FLUX_SHAPES, M_VALUES
from flux158.kernels.bench.step import main, predict, roofline_ms, step_linears


def _rows(method, us_of_m, shapes=None, ms=M_VALUES):
    return [{"gpu": "G", "shape": s.name, "m": str(m), "k": str(s.k), "n": str(s.n), "method": method,
             "us_median": f"{us_of_m(s.name, m):.3f}"} for s in FLUX_SHAPES if shapes is None or s.name in shapes
            for m in ms]


def test_one_step_has_flux_dev_494_block_linears_at_their_token_counts():
    layers = step_linears(1024)
    assert sum(count for _, _, count in layers) == 494  # 19 double blocks x 14 + 38 single blocks x 6 (paper)
    assert {m for _, m, _ in layers} == {4096, 512, 1, 4608}  # image, text, modulation (one image), joint


def test_sums_interpolate_each_layer_at_its_m():
    rows = _rows("bf16", lambda shape, m: 10.0) + _rows("w2a16", lambda shape, m: float(m))
    totals = predict(rows, 1024)
    assert totals["bf16"] == pytest.approx(494 * 10 / 1e3)
    # time = M µs is linear, so interpolation is exact: the sum of M over the layers, counted by hand
    by_hand = 4096 * (76 + 19 + 19) + 512 * (76 + 19 + 19) + 1 * (38 + 38) + 4608 * (114 + 38 + 38)
    assert totals["w2a16"] == pytest.approx(by_hand / 1e3)


def test_unpack_falls_back_to_fused_where_untimed_and_best_takes_the_faster_cell():
    fused = _rows("w158a8_int8", lambda shape, m: 100.0)
    unpack = _rows("unpack_int8", lambda shape, m: 40.0 if shape == "qkvo" else 300.0, ms=(256, 1024, 4608))
    totals = predict(fused + unpack, 1024)
    # unpack: M = 1 modulation layers (76) run fused; qkvo (76 + 76 + 114 layers) at 40; the rest at 300
    assert totals["unpack_int8"] == pytest.approx((76 * 100 + 266 * 40 + (494 - 76 - 266) * 300) / 1e3)
    assert totals["best_int8"] == pytest.approx((266 * 40 + (494 - 266) * 100) / 1e3)
    assert "best_fp8" not in totals  # nothing timed for fp8


def test_cli_needs_every_shape(tmp_path, capsys):
    import csv

    path = tmp_path / "run.csv"
    rows = _rows("bf16", lambda shape, m: 1.0, shapes={"qkvo"})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main([str(path)]) == 2 and "lack shapes" in capsys.readouterr().err


def test_roofline_floor_from_flux_dev_parameter_counts():
    """Big-M layers at the compute peak, the one-row modulation layers at the bandwidth, counted from FLUX.1-dev's
    block parameters instead of the shape table."""
    d, mlp = 3072, 12288
    double_stream = 4 * d * d + 2 * d * mlp  # to_q/k/v/out + ff up/down, per stream (image or text)
    single = 3 * d * d + d * mlp + (d + mlp) * d  # to_q/k/v + proj_mlp + proj_out
    flops = 2 * (19 * double_stream * (4096 + 512) + 38 * single * 4608)
    mods = [(d, 6 * d)] * 38 + [(d, 3 * d)] * 38  # norm1(.context).linear per double block, norm.linear per single

    def mod_bytes(weight_bytes, act_bytes):  # M = 1: the weights, one activation row, one 16-bit output row
        return sum(weight_bytes * k * n + act_bytes * k + 2 * n for k, n in mods)

    peaks = GpuPeaks(bf16_tflops=100.0, int8_tops=200.0, fp8_tflops=None, bandwidth_gbs=1000.0)
    floor = roofline_ms(peaks, 1024)
    assert set(floor) == {"bf16", "w2a16", "w158a8_int8"}  # no fp8 on this GPU
    assert floor["bf16"] == pytest.approx(1e3 * (flops / 100e12 + mod_bytes(2, 2) / 1e12), rel=1e-9)
    assert floor["w2a16"] == pytest.approx(1e3 * (flops / 100e12 + mod_bytes(0.25, 2) / 1e12), rel=1e-9)
    assert floor["w158a8_int8"] == pytest.approx(1e3 * (flops / 200e12 + mod_bytes(0.25, 1) / 1e12), rel=1e-9)
