"""Issue 37 point 3: a run is marked as the paper's protocol only when it is one, and says how it differs when not."""

from __future__ import annotations

import pytest

from flux158.experiments import protocol


@pytest.mark.parametrize("experiment", ["geneval", "t2i_compbench"])
def test_the_paper_experiments_compose_the_paper_protocol(compose, experiment):
    assert protocol.deviations(compose(f"experiment={experiment}", "logger=none")) == []


@pytest.mark.parametrize(("overrides", "expected"), [
    (["benchmark.limit_per_group=1"], ["benchmark.limit_per_group=1 (paper: None)"]),
    (["benchmark.samples_per_prompt=1"], ["benchmark.samples_per_prompt=1 (paper: 4)"]),
    (["sampler.num_inference_steps=28"], ["sampler.num_inference_steps=28 (paper: 50)"]),
    (["benchmark.detector=hf"], ["benchmark.detector='hf' (paper: 'mmdet')"]),
    (["benchmark.detector_checkpoint=/x.pth"], ["benchmark.detector_checkpoint='/x.pth' (paper: None)"]),
])
def test_each_departure_from_the_geneval_protocol_is_named(compose, overrides, expected):
    assert protocol.deviations(compose("experiment=geneval", "logger=none", *overrides)) == expected


def test_a_rehearsal_and_a_subset_of_categories_are_not_the_protocol(compose):
    random = protocol.deviations(compose("experiment=geneval", "model=flux_dev_random", "logger=none"))
    assert random[0] == "random weights" and "benchmark.evaluator_weights='random' (paper: 'pretrained')" in random
    subset = protocol.deviations(compose("experiment=t2i_compbench", "benchmark.categories=[color]", "logger=none"))
    assert subset == ["benchmark.categories=['color'] (paper: ['color', 'shape', 'texture', 'spatial', '3d_spatial', "
                      "'non_spatial', 'numeracy', 'complex'])"]
    assert protocol.deviations(compose("experiment=toyworld", "logger=none")) == [
        "benchmark=toyworld (the paper reports geneval and t2i_compbench)"]
