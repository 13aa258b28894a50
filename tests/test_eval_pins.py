"""Evaluator pins: one table of hub commits, used by every hub load, recorded in metrics.json, checked by the
fetch script."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest

from flux158.eval import pins
from flux158.eval.t2i_compbench.bvqa import BLIP_VQA
from flux158.eval.t2i_compbench.clipscore import CLIP_B32
from flux158.eval.t2i_compbench.depth import DPT_HYBRID
from flux158.eval.t2i_compbench.hub import from_hub
from flux158.eval.t2i_compbench.native import OWLV2


def test_every_hub_model_the_evaluators_load_is_listed_and_pins_are_commits():
    from flux158.eval.geneval.detector import HF_MODEL

    assert {BLIP_VQA, CLIP_B32, DPT_HYBRID, OWLV2, HF_MODEL} == set(pins.PINS)
    for pin in pins.PINS.values():
        assert pin.revision is None or re.fullmatch(r"[0-9a-f]{40}", pin.revision), pin
        assert pin.evidence


class _Recorder:
    calls: list[dict] = []

    @classmethod
    def from_pretrained(cls, model_id, **kwargs):
        cls.calls.append({"model_id": model_id, **kwargs})
        return cls()


def test_hub_loads_use_the_pin_unless_a_revision_is_asked_for(caplog):
    _Recorder.calls.clear()
    from_hub(CLIP_B32, _Recorder, _Recorder)
    from_hub(CLIP_B32, _Recorder, revision="abc")
    from_hub("me/my-judge", _Recorder)
    with caplog.at_level(logging.WARNING):
        from_hub(DPT_HYBRID, _Recorder)
    assert [c["revision"] for c in _Recorder.calls] == [pins.PINS[CLIP_B32].revision] * 2 + ["abc", None, None]
    assert "Intel/dpt-hybrid-midas is not pinned" in caplog.text and "my-judge" not in caplog.text


def test_recorded_revisions_say_pinned_unpinned_or_as_given():
    assert pins.recorded([CLIP_B32, DPT_HYBRID, "me/judge"]) == {
        CLIP_B32: pins.PINS[CLIP_B32].revision, DPT_HYBRID: "unpinned", "me/judge": "as given"}


def test_t2i_compbench_records_the_revisions_of_the_models_that_scored():
    from flux158.eval.t2i_compbench.evaluator import _revisions
    from flux158.eval.t2i_compbench.scoring import ModelSettings, Protocol

    chosen = Protocol(detector="native")
    assert _revisions({"bvqa", "nlp", "detector", "depth"}, chosen, ModelSettings()) == {
        BLIP_VQA: pins.PINS[BLIP_VQA].revision, DPT_HYBRID: "unpinned", OWLV2: pins.PINS[OWLV2].revision}
    assert _revisions({"detector", "judge"}, Protocol(detector="native", judge="native"),
                      ModelSettings(detector_model="me/owl", judge_model="me/judge")) == {
        "me/owl": "as given", "me/judge": "as given"}


def test_check_pins_confirms_each_pin_and_reports_what_it_cannot(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import fetch_eval_weights

    class Api:
        def model_info(self, repo, revision=None):
            if repo == OWLV2 and revision is not None:
                raise ValueError("revision not found")
            return type("Info", (), {"sha": "f" * 40})()

    assert fetch_eval_weights.check_pins(Api()) == 2
    out, err = capsys.readouterr()
    assert f"{DPT_HYBRID}: main is {'f' * 40}; unpinned" in out
    assert f"{CLIP_B32}: main is {'f' * 40}; pinned {pins.PINS[CLIP_B32].revision} (exists)" in out
    assert f"{OWLV2}: cannot confirm {pins.PINS[OWLV2].revision}" in err


@pytest.mark.parametrize("detector", ["hf"])
def test_geneval_records_the_detector_pin(detector, monkeypatch):
    from flux158.eval.geneval import build

    monkeypatch.setattr(build, "build_detector", lambda *a, **k: None)
    monkeypatch.setattr(build, "build_colors", lambda *a, **k: None)
    scorer = build.build_scorer(detector, "pretrained")
    assert scorer.description["revisions"]["facebook/mask2former-swin-small-coco-instance"] == "unpinned"
    assert scorer.description["revisions"]["open_clip ViT-L-14/openai"] == pins.OPEN_CLIP
