"""GenEval's rules against the behaviours confirmed by running the official scoring code (benchmarks.md §4)."""

import numpy as np
import pytest

from flux158.eval.geneval.rules import Detection, filter_detections, judge, relative_position, summarize


def det(x1, y1, x2, y2, score=0.99):
    return Detection((x1, y1, x2, y2), score)


def no_color(_):
    raise AssertionError("color must not be asked for")


@pytest.mark.parametrize(("score", "tag", "kept"), [
    (0.3, "two_object", False), (0.3001, "two_object", True), (float(np.float32(0.3)), "two_object", False),
    (0.9, "counting", False), (0.900000001, "counting", False), (0.9001, "counting", True), (0.5, "counting", False),
])
def test_strict_float32_thresholds(score, tag, kept):
    out = filter_detections({"dog": [det(0, 0, 10, 10, score)]}, tag)
    assert ("dog" in out) == kept


def test_counting_threshold_applies_to_every_class_and_caps_at_16():
    raw = {"sink": [det(i, 0, i + 5, 5, 0.95) for i in range(20)], "cat": [det(0, 0, 5, 5, 0.8)]}
    out = filter_detections(raw, "counting")
    assert len(out["sink"]) == 16 and "cat" not in out
    meta = {"tag": "counting", "include": [{"class": "sink", "count": 3}], "exclude": [{"class": "sink", "count": 4}]}
    assert judge(meta, out, no_color) == (False, "expected sink<4, found 16")


def test_identical_boxes_are_all_kept_and_sorted_by_score():
    raw = {"cup": [det(0, 0, 10, 10, 0.5), det(0, 0, 10, 10, 0.7), det(0, 0, 10, 10, 0.6)]}
    assert [d.score for d in filter_detections(raw, "single_object")["cup"]] == [0.7, 0.6, 0.5]


def test_only_the_top_count_detections_are_judged_for_color():
    top, other = det(0, 0, 10, 10, 0.9), det(20, 0, 30, 10, 0.8)
    colors = {top.box: "blue", other.box: "red"}
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
    correct, reason = judge(meta, {"car": [top, other]}, lambda d: colors[d.box])
    assert not correct and reason.startswith("expected red car>=1, found 0 red")


def test_position_uses_top1_of_each_group():
    meta = {"tag": "position", "include": [{"class": "teddy bear", "count": 1},
                                           {"class": "dog", "count": 1, "position": ["right of", 0]}]}
    bear, dog = det(0, 0, 10, 10), det(50, 0, 60, 10)
    assert judge(meta, {"teddy bear": [bear], "dog": [dog]}, no_color) == (True, "")
    correct, reason = judge(meta, {"teddy bear": [dog], "dog": [bear]}, no_color)
    assert not correct and reason == "expected dog right of target, found left of target"


def test_dead_zone_gives_no_relation_and_two_spaces():
    a, b = det(0, 0, 10, 10), det(1, 0, 11, 10)  # offset 1 px < 0.1 * (10 + 10)
    assert relative_position(a, b) == set()
    meta = {"tag": "position", "include": [{"class": "b", "count": 1}, {"class": "a", "count": 1,
                                                                         "position": ["left of", 0]}]}
    assert judge(meta, {"a": [a], "b": [b]}, no_color) == (False, "expected a left of target, found  target")


def test_revised_offset_is_divided_by_the_original_norm():
    # 100 px apart horizontally, boxes 300 px wide each: revised dx = max(100 - 60, 0) = 40, 40/100 < 0.5
    a, b = det(100, 0, 400, 10), det(0, 0, 300, 10)
    assert relative_position(a, b) == set()
    assert relative_position(det(100, 0, 110, 10), det(0, 0, 10, 10)) == {"right of"}


def test_three_four_five_geometry_is_exactly_half_and_gives_nothing():
    # zero-size boxes: revised offset == offset = (3, 4), components 0.6 and 0.8 -> "right of" and "below"
    assert relative_position(det(3, 4, 3, 4), det(0, 0, 0, 0)) == {"right of", "below"}
    # offset (6, 8), widths summing to 10: revised dx = 6 - 1 = 5, and 5 / |(6, 8)| = 0.5 exactly -> not "right of"
    assert relative_position(det(6, 8, 11, 8), det(0, 0, 5, 0)) == {"below"}
    assert relative_position(det(6.2, 8, 11.2, 8), det(0, 0, 5, 0)) == {"right of", "below"}


def test_missing_target_gives_both_reasons():
    meta = {"tag": "position", "include": [{"class": "b", "count": 1}, {"class": "a", "count": 1,
                                                                         "position": ["above", 0]}]}
    assert judge(meta, {"a": [det(0, 0, 5, 5)]}, no_color) == (
        False, "expected b>=1, found 0\nno target for a to be above")


def test_summary_is_the_unweighted_mean_over_tags():
    rows = [{"tag": "counting", "correct": c} for c in (True, False, False, False)] + [
        {"tag": "colors", "correct": True}]
    assert summarize(rows) == {"counting": 0.25, "colors": 1.0, "overall": 0.625}


def test_counting_counts_only_detections_above_0_9():
    meta = {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 3}]}
    two_sure_one_unsure = {"cup": [det(0, 0, 5, 5, 0.95), det(10, 0, 15, 5, 0.92), det(20, 0, 25, 5, 0.85)]}
    assert judge(meta, filter_detections(two_sure_one_unsure, "counting"), no_color) == (True, "")
    three_sure = {"cup": [det(0, 0, 5, 5, 0.95), det(10, 0, 15, 5, 0.92), det(20, 0, 25, 5, 0.91)]}
    assert judge(meta, filter_detections(three_sure, "counting"), no_color) == (False, "expected cup<3, found 3")
    one_sure = {"cup": [det(0, 0, 5, 5, 0.95), det(10, 0, 15, 5, 0.6)]}
    assert judge(meta, filter_detections(one_sure, "counting"), no_color) == (False, "expected cup>=2, found 1")


@pytest.mark.parametrize(("dx", "dy", "relation"), [(-50, 0, "left of"), (50, 0, "right of"), (0, -50, "above"),
                                                    (0, 50, "below")])
def test_each_relation_with_image_y_pointing_down(dx, dy, relation):
    target = det(100, 100, 110, 110)
    obj = det(100 + dx, 100 + dy, 110 + dx, 110 + dy)
    assert relative_position(obj, target) == {relation}
    meta = {"tag": "position", "include": [{"class": "t", "count": 1},
                                           {"class": "o", "count": 1, "position": [relation, 0]}]}
    assert judge(meta, {"t": [target], "o": [obj]}, no_color) == (True, "")


def test_color_attr_fails_when_only_the_second_object_has_the_wrong_color():
    car, bench = det(0, 0, 10, 10), det(20, 0, 30, 10)
    meta = {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                             {"class": "bench", "count": 1, "color": "green"}]}
    colors = {car.box: "red", bench.box: "brown"}
    correct, reason = judge(meta, {"car": [car], "bench": [bench]}, lambda d: colors[d.box])
    assert not correct and reason == "expected green bench>=1, found 0 green; and 1 brown"
    colors[bench.box] = "green"
    assert judge(meta, {"car": [car], "bench": [bench]}, lambda d: colors[d.box]) == (True, "")


def test_masks_do_not_change_the_rules():
    mask = np.ones((10, 10), dtype=bool)
    with_mask, without = Detection((0, 0, 10, 10), 0.95, mask), det(0, 0, 10, 10, 0.95)
    meta = {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}
    for d in (with_mask, without):
        kept = filter_detections({"cat": [d]}, "single_object")
        assert kept["cat"][0] is d and judge(meta, kept, no_color) == (True, "")
