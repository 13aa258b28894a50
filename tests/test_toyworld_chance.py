"""scripts/toyworld_chance.py: the toy benchmark's chance level on images without a scene."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import toyworld_chance  # noqa: E402


def test_chance_covers_every_tag_and_a_blank_image_passes_nothing():
    result = toyworld_chance.chance(per_tag=2, images=2, seed=0)
    tags = {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert set(result) == {"noise", "blank"}
    for rates in result.values():
        assert set(rates) == tags | {"overall"}
        assert rates["overall"] == pytest.approx(sum(rates[t] for t in tags) / len(tags))
    assert all(rate == 0.0 for rate in result["blank"].values())  # nothing detected on the background alone
