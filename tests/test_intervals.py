"""Bootstrap intervals of GenEval-style scores against closed-form expectations."""

import math

import numpy as np
import pytest

from flux158.eval.intervals import (
    as_json,
    comparison_json,
    paired_comparison,
    pooled_comparison,
    prompt_entry,
    score_intervals,
)


def _rows(tag: str, outcomes: list[list[bool]]) -> list[dict]:
    """One row per image: prompt entry i holds the images outcomes[i] (GenEval's `<index>/samples/<k>.png`)."""
    return [{"tag": tag, "filename": f"{tag}-{i:05d}/samples/{k:04d}.png", "correct": c}
            for i, images in enumerate(outcomes) for k, c in enumerate(images)]


def _binomial_half_width(p: float, n: int) -> float:
    return 1.959964 * math.sqrt(p * (1 - p) / n)


def test_prompt_entry_is_the_folder_of_the_image():
    assert prompt_entry({"filename": "00012/samples/0003.png"}) == "00012"
    assert prompt_entry({"prompt": "a red circle"}) == "a red circle"


def test_all_correct_gives_a_degenerate_interval():
    out = score_intervals(_rows("a", [[True] * 4] * 20) + _rows("b", [[True] * 4] * 20), resamples=500)
    assert {k: (i.estimate, i.low, i.high) for k, i in out.items()} == {
        k: (1.0, 1.0, 1.0) for k in ("a", "b", "overall")}


def test_independent_images_match_the_binomial_interval():
    rng = np.random.default_rng(1)
    outcomes = [[bool(x)] for x in rng.random(400) < 0.5]
    interval = score_intervals(_rows("a", outcomes), resamples=20_000)["a"]
    p = np.mean([o[0] for o in outcomes])
    assert interval.estimate == pytest.approx(p)
    assert interval.half_width == pytest.approx(_binomial_half_width(p, 400), rel=0.1)
    assert interval.low < p < interval.high


def test_images_of_one_prompt_count_as_one_unit():
    # every prompt's 4 images agree: the evidence is 100 prompts, not 400 images, so the interval is twice as wide
    rng = np.random.default_rng(2)
    outcomes = [[bool(x)] * 4 for x in rng.random(100) < 0.5]
    p = np.mean([o[0] for o in outcomes])
    interval = score_intervals(_rows("a", outcomes), resamples=20_000)["a"]
    assert interval.half_width == pytest.approx(_binomial_half_width(p, 100), rel=0.1)


def test_overall_is_the_mean_of_tags_with_their_variances_combined():
    rng = np.random.default_rng(3)
    a = [[bool(x)] for x in rng.random(400) < 0.3]
    b = [[bool(x)] for x in rng.random(400) < 0.7]
    out = score_intervals(_rows("a", a) + _rows("b", b), resamples=20_000)
    pa, pb = np.mean(a), np.mean(b)
    assert out["overall"].estimate == pytest.approx((pa + pb) / 2)
    expected = math.hypot(_binomial_half_width(pa, 400), _binomial_half_width(pb, 400)) / 2
    assert out["overall"].half_width == pytest.approx(expected, rel=0.1)


def test_intervals_are_deterministic_for_a_seed():
    rows = _rows("a", [[bool(x)] for x in np.random.default_rng(4).random(50) < 0.5])
    assert score_intervals(rows, 1000, seed=7) == score_intervals(rows, 1000, seed=7)


def test_paired_comparison_of_identical_results_is_exact():
    rows = _rows("a", [[bool(x)] * 2 for x in np.random.default_rng(5).random(60) < 0.5])
    out = paired_comparison(rows, rows, resamples=1000)
    for part in ("a", "overall"):
        assert (out[part]["retention"].low, out[part]["retention"].high) == (1.0, 1.0)
        assert (out[part]["difference"].low, out[part]["difference"].high) == (0.0, 0.0)


def test_paired_comparison_is_tighter_than_independent_intervals():
    rng = np.random.default_rng(6)
    reference = [[bool(x)] for x in rng.random(300) < 0.6]
    # the model fails 10 % of the reference's successes and nothing else: retention exactly 0.9 in expectation
    mine = [[c and rng.random() >= 0.1] for (c,) in reference]
    out = paired_comparison(_rows("a", mine), _rows("a", reference), resamples=20_000)["overall"]
    pm, pr = np.mean(mine), np.mean(reference)
    assert out["difference"].estimate == pytest.approx(pm - pr)
    assert out["retention"].estimate == pytest.approx(pm / pr)
    # paired: the difference's spread is that of the flips only, far below two independent binomials
    flips = np.mean([r[0] and not m[0] for m, r in zip(mine, reference, strict=True)])
    assert out["difference"].half_width == pytest.approx(_binomial_half_width(flips, 300), rel=0.15)
    assert out["difference"].half_width < 0.5 * math.hypot(_binomial_half_width(pm, 300),
                                                            _binomial_half_width(pr, 300))


def test_paired_comparison_refuses_different_images():
    rows = _rows("a", [[True, False]] * 5)
    with pytest.raises(ValueError, match="same prompt entries"):
        paired_comparison(rows, rows[:-1])
    with pytest.raises(ValueError, match="same prompt entries"):
        paired_comparison(rows, [{**r, "tag": "b"} for r in rows])


def test_pooled_comparison_counts_the_spread_between_runs():
    # Method A's two runs: one gets every image right, one none (mean 0.5); the reference's two runs each get
    # exactly half of every prompt's images right. Prompts are all alike, so only the runs vary: a draw picks A's
    # runs (all, all), (none, none) or one of each with chances 1/4, 1/4, 1/2, giving differences +0.5, -0.5, 0.
    entries = 40
    a_runs = [_rows("a", [[True, True]] * entries), _rows("a", [[False, False]] * entries)]
    b_runs = [_rows("a", [[True, False]] * entries)] * 2
    out = pooled_comparison(a_runs, b_runs, resamples=4000)["overall"]["difference"]
    assert out.estimate == 0.0 and (out.low, out.high) == (-0.5, 0.5)
    # one run per side is the paired comparison, number for number
    rng = np.random.default_rng(8)
    mine, ref = (_rows("a", [[bool(x)] * 2 for x in rng.random(50) < p]) for p in (0.4, 0.6))
    assert pooled_comparison([mine], [ref], resamples=500) == paired_comparison(mine, ref, resamples=500)
    # identical runs add nothing: the pooled interval is the single pair's
    assert pooled_comparison([mine, mine], [ref, ref], resamples=500) == paired_comparison(mine, ref, resamples=500)
    with pytest.raises(ValueError, match="same prompt entries"):
        pooled_comparison([mine, mine[:-1]], [ref, ref])


def test_json_blocks_name_level_method_and_bounds():
    rows = _rows("a", [[True, False]] * 5)
    blob = as_json(score_intervals(rows, 100), 100, 0.95)
    assert blob["level"] == 0.95 and blob["resamples"] == 100 and "bootstrap" in blob["method"]
    assert blob["a"][0] <= 0.5 <= blob["a"][1] and blob["overall"] == blob["a"]
    comparison = comparison_json(paired_comparison(rows, rows, 100), 100, 0.95)
    assert comparison["overall"]["retention"] == {"estimate": 1.0, "low": 1.0, "high": 1.0}
    assert comparison["method"].startswith("paired")


def test_compare_evaluations_script_pools_comma_joined_runs(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    def folder(name: str, outcomes: list[list[bool]]) -> str:
        (tmp_path / name).mkdir()
        lines = [json.dumps(row) for row in _rows("a", outcomes)]
        (tmp_path / name / "results.jsonl").write_text("\n".join(lines) + "\n")
        return str(tmp_path / name)

    ref = folder("ref", [[True, False]] * 10)
    hit, miss = folder("hit", [[True, True]] * 10), folder("miss", [[False, False]] * 10)
    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_evaluations.py"
    out = subprocess.run([sys.executable, str(script), ref, hit, f"{hit},{miss}", "--resamples", "2000"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "hit - ref" and out[2].split() == ["overall", "+0.500", "[+0.500,", "+0.500]"]
    assert out[3] == "hit,miss - ref" and out[5].split() == ["overall", "+0.000", "[-0.500,", "+0.500]"]
