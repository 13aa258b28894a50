"""Evaluator pins: one table of hub commits, used by every hub load, recorded in metrics.json, checked by the
fetch script."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
import torch

from flux158.eval import pins
from flux158.eval.t2i_compbench.bvqa import BLIP_VQA
from flux158.eval.t2i_compbench.clipscore import CLIP_B32
from flux158.eval.t2i_compbench.depth import DPT_HYBRID
from flux158.eval.t2i_compbench.hub import from_hub
from flux158.eval.t2i_compbench.native import OWLV2


def test_every_hub_model_the_evaluators_load_is_listed_and_pins_are_commits():
    from flux158.eval.geneval.detector import HF_MODEL
    from flux158.eval.open_clip_weights import tag_source

    open_clip_repo = tag_source("ViT-L-14", "openai")[0]  # the hub repo open_clip's own tag table names
    assert {BLIP_VQA, CLIP_B32, DPT_HYBRID, OWLV2, HF_MODEL, open_clip_repo} == set(pins.PINS)
    for pin in pins.PINS.values():
        assert re.fullmatch(r"[0-9a-f]{40}", pin.revision), pin
        assert pin.evidence


@pytest.fixture
def unpinned_repo(monkeypatch) -> str:
    """A listed repo without a commit yet (every real one is pinned now)."""
    repo = "org/not-pinned-yet"
    monkeypatch.setitem(pins.PINS, repo, pins.HubPin(repo, None, "test"))
    return repo


class _Recorder:
    calls: list[dict] = []

    @classmethod
    def from_pretrained(cls, model_id, **kwargs):
        cls.calls.append({"model_id": model_id, **kwargs})
        return cls()


def test_hub_loads_use_the_pin_unless_a_revision_is_asked_for(caplog, unpinned_repo):
    _Recorder.calls.clear()
    from_hub(CLIP_B32, _Recorder, _Recorder)
    from_hub(CLIP_B32, _Recorder, revision="abc")
    from_hub("me/my-judge", _Recorder)
    with caplog.at_level(logging.WARNING):
        from_hub(unpinned_repo, _Recorder)
    assert [c["revision"] for c in _Recorder.calls] == [pins.PINS[CLIP_B32].revision] * 2 + ["abc", None, None]
    assert f"{unpinned_repo} is not pinned" in caplog.text and "my-judge" not in caplog.text


def test_recorded_revisions_say_pinned_unpinned_or_as_given(unpinned_repo):
    assert pins.recorded([CLIP_B32, unpinned_repo, "me/judge"]) == {
        CLIP_B32: pins.PINS[CLIP_B32].revision, unpinned_repo: "unpinned", "me/judge": "as given"}


def test_t2i_compbench_records_the_revisions_of_the_models_that_scored():
    from flux158.eval.t2i_compbench.evaluator import _revisions
    from flux158.eval.t2i_compbench.scoring import ModelSettings, Protocol

    chosen = Protocol(detector="native")
    assert _revisions({"bvqa", "nlp", "detector", "depth"}, chosen, ModelSettings()) == {
        BLIP_VQA: pins.PINS[BLIP_VQA].revision, DPT_HYBRID: pins.PINS[DPT_HYBRID].revision,
        OWLV2: pins.PINS[OWLV2].revision}
    assert _revisions({"detector", "judge"}, Protocol(detector="native", judge="native"),
                      ModelSettings(detector_model="me/owl", judge_model="me/judge")) == {
        "me/owl": "as given", "me/judge": "as given"}


def test_check_pins_confirms_each_pin_and_reports_what_it_cannot(capsys, unpinned_repo):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import fetch_eval_weights

    class Api:
        def model_info(self, repo, revision=None):
            if repo == OWLV2 and revision is not None:
                raise ValueError("revision not found")
            return type("Info", (), {"sha": "f" * 40})()

    assert fetch_eval_weights.check_pins(Api()) == 2
    out, err = capsys.readouterr()
    assert f"{unpinned_repo}: main is {'f' * 40}; unpinned" in out
    assert f"{CLIP_B32}: main is {'f' * 40}; pinned {pins.PINS[CLIP_B32].revision} (exists)" in out
    assert f"{OWLV2}: cannot confirm {pins.PINS[OWLV2].revision}" in err


def test_geneval_records_the_detector_and_color_model_pins(monkeypatch):
    from flux158.eval.geneval import build

    monkeypatch.setattr(build, "build_detector", lambda *a, **k: None)
    monkeypatch.setattr(build, "build_colors", lambda *a, **k: type("Colors", (), {"revision": "0" * 40})())
    scorer = build.build_scorer("hf", "pretrained")
    assert scorer.description["revisions"] == {
        "facebook/mask2former-swin-small-coco-instance": pins.PINS[
            "facebook/mask2former-swin-small-coco-instance"].revision,
        "open_clip ViT-L-14/openai": "0" * 40}


def test_open_clip_tags_load_the_pinned_file_with_the_tags_activation_and_preprocessing(monkeypatch, tmp_path):
    """`ViT-L-14/openai` in open_clip 3.x: the tag says QuickGELU, the model config does not, and open_clip only
    warns. The pinned loader must download the tag's file at the pin and build the model the tag describes."""
    import open_clip
    import open_clip.pretrained
    from safetensors.torch import save_file
    from torchvision.transforms import Normalize

    from flux158.eval import open_clip_weights
    from flux158.eval.geneval.build import register_tiny_clip

    name, repo = register_tiny_clip(), "timm/vit_large_patch14_clip_224.openai"
    reference = open_clip.create_model(name)
    save_file(reference.state_dict(), tmp_path / "open_clip_model.safetensors")
    tag = {"hf_hub": f"{repo}/", "quick_gelu": True, "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    downloads = []

    def download(repo_id, filename=None, revision=None, cache_dir=None):
        downloads.append((repo_id, filename, revision))
        return str(tmp_path / "open_clip_model.safetensors")

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda model, tag_name: tag if tag_name == "openai" else {})
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", download)
    model, preprocess, revision = open_clip_weights.create_pinned(name, "openai", tmp_path)

    assert downloads == [(repo, None, pins.PINS[repo].revision)] and revision == pins.PINS[repo].revision
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert any(type(m).__name__ == "QuickGELU" for m in model.modules())
    assert not any(type(m).__name__ == "QuickGELU" for m in reference.modules())  # the config alone: plain GELU
    normalize = next(t for t in preprocess.transforms if isinstance(t, Normalize))
    assert tuple(normalize.mean) == tag["mean"] and tuple(normalize.std) == tag["std"]


def test_open_clip_without_weights_is_a_clear_error(monkeypatch, tmp_path):
    import open_clip
    import open_clip.pretrained

    from flux158.eval.errors import WeightsUnavailableError
    from flux158.eval.geneval.build import register_tiny_clip
    from flux158.eval.open_clip_weights import create_pinned

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda *a: {"hf_hub": "timm/x/"})
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained_from_hf", offline)
    with pytest.raises(WeightsUnavailableError, match="fetch_eval_weights"):
        create_pinned(register_tiny_clip(), "openai", tmp_path)
