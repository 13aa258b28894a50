"""Toy-world scenes are deterministic, true to their captions, and the detector judges them perfectly."""

import numpy as np
import pytest

from flux158.eval.evaluator import ToyWorldEvaluator
from flux158.eval.toyworld.detector import MIN_AREA, ToyDetector
from flux158.eval.toyworld.scoring import score_image
from flux158.toyworld.scenes import (
    BACKGROUND,
    PALETTE,
    TAGS,
    heldout_prompts,
    render_scene,
    sample_prompt,
    scene_for,
    shape_mask,
)


def test_scene_generator_is_deterministic():
    spec = {"tag": "counting", "include": [{"class": "circle", "count": 3}],
            "exclude": [{"class": "circle", "count": 4}], "prompt": "a photo of three circles"}
    a, objs_a = scene_for(spec, seed=5)
    b, objs_b = scene_for(spec, seed=5)
    assert np.array_equal(a, b) and objs_a == objs_b
    assert not np.array_equal(a, scene_for(spec, seed=6)[0])
    assert heldout_prompts() == heldout_prompts()


def test_scenes_hold_what_the_caption_says():
    rng = np.random.default_rng(0)
    for _ in range(300):
        spec = sample_prompt(rng)
        image, objs = render_scene(spec, rng)
        for clause in spec["include"]:
            matching = [o for o in objs if o.shape == clause["class"]]
            assert len(matching) == clause["count"]
            if "color" in clause:
                assert all(o.color == clause["color"] for o in matching)
                x1, y1, x2, y2 = matching[0].box
                assert tuple(image[(y1 + y2) // 2, (x1 + x2) // 2]) == PALETTE[clause["color"]]


def test_heldout_prompts_cover_every_tag_in_geneval_format():
    prompts = heldout_prompts()
    assert {p["tag"] for p in prompts} == set(TAGS)
    assert len({p["prompt"] for p in prompts}) == len(prompts)
    assert all(set(p) >= {"tag", "include", "prompt"} for p in prompts)
    counting = [p for p in prompts if p["tag"] == "counting"]
    assert all(p["exclude"][0]["count"] == p["include"][0]["count"] + 1 for p in counting)


def test_balanced_prompts_give_every_tag_the_same_number_of_entries():
    distinct = heldout_prompts(per_tag=30)
    balanced = heldout_prompts(per_tag=30, repeat=True)
    assert len(balanced) == 30 * len(TAGS)
    for tag in TAGS:
        mine = [p["prompt"] for p in balanced if p["tag"] == tag]
        theirs = [p["prompt"] for p in distinct if p["tag"] == tag]
        assert len(mine) == 30 and set(mine) == set(theirs)  # the same prompts, cycled where a tag has fewer
        assert mine[: len(theirs)] == theirs and mine == [theirs[i % len(theirs)] for i in range(30)]
    assert len({p["prompt"] for p in balanced if p["tag"] == "single_object"}) < 30  # fewer distinct than entries


def test_detector_scores_ground_truth_at_least_99_percent():
    detector = ToyDetector(PALETTE)
    rng = np.random.default_rng(123)
    verdicts = {tag: [] for tag in TAGS}
    for i in range(600):
        spec = sample_prompt(rng, TAGS[i % len(TAGS)])
        image, _ = render_scene(spec, rng)
        verdicts[spec["tag"]].append(score_image(detector, image, spec, 0.3, 0.9)[0])
    for tag, v in verdicts.items():
        assert np.mean(v) >= 0.99, tag


def test_detector_rejects_wrong_scenes():
    """The same scenes judged against a wrong caption must fail: the detector is not trivially permissive."""
    detector = ToyDetector(PALETTE)
    wrong = {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "red"}], "prompt": "-"}
    spec = {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "blue"}], "prompt": "-"}
    image, _ = scene_for(spec, seed=1)
    assert score_image(detector, image, spec, 0.3, 0.9)[0]
    correct, reason = score_image(detector, image, wrong, 0.3, 0.9)
    assert not correct and "found 0 red" in reason
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert not score_image(detector, noise, spec, 0.3, 0.9)[0]


def test_min_area_keeps_the_smallest_rendered_object():
    """Crowds (counts of 3+) draw the smallest shapes; every rendered object must be far above the noise cut."""
    rng = np.random.default_rng(7)
    areas = []
    for shape in ("circle", "square", "triangle"):
        spec = {"tag": "counting", "include": [{"class": shape, "count": 4}], "prompt": "-"}
        for _ in range(20):
            _, objects = render_scene(spec, rng)
            areas += [int(shape_mask(o.shape, o.box[2] - o.box[0]).sum()) for o in objects]
    assert min(areas) == 41  # a triangle in a 9-pixel box
    assert MIN_AREA <= min(areas) / 2


def test_toy_evaluator_records_and_applies_its_min_area():
    spec = {"tag": "single_object", "include": [{"class": "square", "count": 1}], "prompt": "a photo of a square"}
    image, (square,) = scene_for(spec, seed=3)
    area = (square.box[2] - square.box[0]) ** 2
    assert ToyWorldEvaluator(PALETTE, BACKGROUND).description["min_area"] == MIN_AREA
    for min_area, found in ((area, True), (area + 1, False)):
        evaluator = ToyWorldEvaluator(PALETTE, BACKGROUND, 0.3, 0.7, min_area)
        assert evaluator.description["min_area"] == min_area
        assert bool(evaluator.detector().detect(image)) is found


def test_detector_validates_image_layout():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        ToyDetector(PALETTE).detect(np.zeros((3, 32, 32), dtype=np.uint8))
