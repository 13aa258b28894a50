"""scripts/toyworld_chance.py: the toy benchmark's chance level on images without a scene."""

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import toyworld_chance  # noqa: E402

from flux158.eval.toyworld.detector import MIN_AREA  # noqa: E402

TAGS = {"single_object", "two_object", "counting", "colors", "position", "color_attr"}


def test_chance_covers_every_tag_and_a_blank_image_passes_nothing():
    result = toyworld_chance.chance(per_tag=2, images=2, seed=0)
    assert set(result) == {"noise", "blank"}
    for rates in result.values():
        assert set(rates) == TAGS | {"overall"}
        assert rates["overall"] == pytest.approx(sum(rates[t] for t in TAGS) / len(TAGS))
    assert all(rate == 0.0 for rate in result["blank"].values())  # nothing detected on the background alone


def test_noise_passes_at_most_two_percent_of_any_tag():
    """The benchmark's floor: 200 noise images per tag. At a min_area of 6 pixels noise passes most single- and
    two-object prompts, which the second assertion keeps visible."""
    noise = toyworld_chance.chance(per_tag=50, images=4, seed=0)["noise"]
    assert all(noise[tag] <= 0.02 for tag in TAGS), noise
    loose = toyworld_chance.chance(per_tag=5, images=4, seed=0, min_area=6)["noise"]
    assert loose["single_object"] >= 0.5 and loose["two_object"] >= 0.5, loose


def test_the_benchmark_config_uses_the_detectors_min_area():
    config = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "benchmark" / "toyworld.yaml")
    assert config.min_area == MIN_AREA
