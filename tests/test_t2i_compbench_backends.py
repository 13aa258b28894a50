"""T2I-CompBench's native detector (OWLv2 over UniDet's names), the S-CoT judge (in-environment and through the
official script), their wiring into category scores and the stage, and the pinned UniDet vocabulary."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flux158.eval.errors import WeightsUnavailableError
from flux158.eval.t2i_compbench import judge as scot
from flux158.eval.t2i_compbench.native import NativeDetector, detections_from_scores
from flux158.eval.t2i_compbench.rules import Detection


def _write(category: Path, names: list[str]) -> None:
    (category / "samples").mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (16, 16)).save(category / "samples" / name)


class _Tagger:
    """A fixed parse: DET, ADP and NUM for a few function words, NOUN for every other word."""

    TAGS = {"a": "DET", "an": "DET", "the": "DET", "two": "NUM", "on": "ADP", "of": "ADP", "in": "ADP", "to": "ADP",
            "near": "ADP", "next": "ADV"}

    def __call__(self, text):
        doc = _Doc(type("Token", (), {"text": w, "pos_": self.TAGS.get(w, "NOUN")})() for w in text.split())
        doc.noun_chunks = [type("Span", (), {"text": t})() for t in text.split(" and ")]
        return doc


class _Doc(list):
    pass


def test_detections_are_thresholded_nms_per_class_and_best_first():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]])  # boxes 0 and 1: IoU 0.81
    probs = torch.tensor([[0.9, 0.3], [0.8, 0.05], [0.05, 0.6]])
    # "a": box 0 survives, box 1 is suppressed by it, box 2 is under 0.1; "b": boxes 2 and 0 (1 under 0.1)
    assert detections_from_scores(probs, boxes, ["a", "b"]) == [
        Detection("a", (0.0, 0.0, 10.0, 10.0), pytest.approx(0.9)),
        Detection("b", (50.0, 50.0, 60.0, 60.0), pytest.approx(0.6)),
        Detection("b", (0.0, 0.0, 10.0, 10.0), pytest.approx(0.3))]
    assert len(detections_from_scores(probs, boxes, ["a", "b"], max_detections=2)) == 2


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from flux158.models.tokenizers import build_clip_tokenizer

    return build_clip_tokenizer(tmp_path_factory.mktemp("clip-tok"))


def test_native_detector_queries_every_label_once_and_matches_owlv2s_forward(clip_tokenizer):
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor

    from flux158.eval.t2i_compbench.depth import TO_DETECTOR_RESOLUTION

    tok = clip_tokenizer
    torch.manual_seed(0)
    config = Owlv2Config(
        text_config={"vocab_size": tok.vocab_size, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 64, "patch_size": 16}, projection_dim=32)
    model = Owlv2ForObjectDetection(config)
    labels = ["dog", "cat", "dining table", "person", "tv"]
    detector = NativeDetector(model, tok, Owlv2ImageProcessor(size={"height": 64, "width": 64}), labels, "cpu",
                              query_batch=2)  # query embeddings built in three batches
    image = Image.fromarray((np.random.default_rng(0).random((100, 80, 3)) * 255).astype(np.uint8))
    small = TO_DETECTOR_RESOLUTION(image)
    assert small.size == (384, 480)
    text = tok(labels, padding="max_length", max_length=16, return_tensors="pt")
    pixels = detector.image_processor(images=small, return_tensors="pt").pixel_values
    with torch.no_grad():
        reference = model(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels)
    probs, boxes = detector.scores_and_boxes(small)
    torch.testing.assert_close(probs, reference.logits[0].sigmoid(), atol=1e-5, rtol=1e-5)
    # normalised boxes are in units of the padded square's side (480), clipped to the 384 x 480 image
    expected = reference.pred_boxes[0]
    x1 = ((expected[:, 0] - expected[:, 2] / 2) * 480).clamp(0, 384)
    torch.testing.assert_close(boxes[:, 0], x1, atol=1e-3, rtol=1e-5)
    detections = detector.detect(image)
    assert all(d.label in labels and 0 <= d.box[0] <= d.box[2] <= 384 and 0 <= d.box[1] <= d.box[3] <= 480
               for d in detections)
    assert [d.score for d in detections] == sorted((d.score for d in detections), reverse=True)


class _FixedDetector:
    def __init__(self, detections):
        self.detections = detections

    def detect(self, image):
        return list(self.detections)


class _FlatDepth:
    """Inverse depth 0.8 left of x = 50 (closer), 0.2 right of it, indexed [x, y] as upstream reads it."""

    def detector_space(self, image):
        depth = np.full((100, 100), 0.2)
        depth[:50] = 0.8
        return depth


def test_native_detector_feeds_the_official_rules(tmp_path):
    from flux158.eval.t2i_compbench.scoring import score_category

    dog, cat = Detection("dog", (0, 0, 10, 10), 0.9), Detection("cat", (100, 0, 110, 10), 0.8)
    spatial = tmp_path / "spatial"
    _write(spatial, ["a dog on the left of a cat_000000.png"])
    result = score_category(spatial, "spatial", samples_per_prompt=1, nlp=_Tagger(),
                            detector=_FixedDetector([dog, cat]), progress=False)
    # dx = +100, |dx| > |dy|, no overlap: position 1 -> 0.25 * 0.9 + 0.25 * 0.8 + 0.5
    assert result.score == pytest.approx(0.925) and result.metric == "unidet-2d (native)"

    numeracy = tmp_path / "numeracy"
    _write(numeracy, ["two dogs_000000.png"])
    objects = (["dog", "cat"], ["dogs", "cats"])
    two_dogs = [dog, Detection("dog", (200, 200, 220, 220), 0.5)]
    assert score_category(numeracy, "numeracy", samples_per_prompt=1, nlp=_Tagger(), numeracy_objects=objects,
                          detector=_FixedDetector(two_dogs), progress=False).score == pytest.approx(1.0)
    assert score_category(numeracy, "numeracy", samples_per_prompt=1, nlp=_Tagger(), numeracy_objects=objects,
                          detector=_FixedDetector([dog]), progress=False).score == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs numeracy_objects"):
        score_category(numeracy, "numeracy", samples_per_prompt=1, nlp=_Tagger(), detector=_FixedDetector([dog]))

    depth_dir = tmp_path / "3d_spatial"
    _write(depth_dir, ["a dog in front of a cat_000000.png"])
    # the dog's rows (x 0..60) average (50 * 0.8 + 10 * 0.2) / 60 = 0.7, the cat's (x 40..100) 0.3; IoU 20/100
    near, far = Detection("dog", (0, 0, 60, 100), 0.6), Detection("cat", (40, 0, 100, 100), 0.4)
    result = score_category(depth_dir, "3d_spatial", samples_per_prompt=1, nlp=_Tagger(), depth=_FlatDepth(),
                            detector=_FixedDetector([near, far]), progress=False)
    # the dog is closer (larger inverse depth): position iou / 0.5 = 0.4 -> 0.25 * (0.6 + 0.4) + 0.5 * 0.4
    assert result.score == pytest.approx(0.45)


def test_scot_questions_keep_upstreams_wording_and_whitespace():
    w = " " * 16
    spatial = scot.question("spatial", "a dog on the left of a cat")
    assert spatial.startswith('According to the image and your previous answer, evaluate if the text "a dog on the '
                              f'left of a cat" is correctly portrayed in the image. \n {w}Give a score from 1 to 5')
    assert spatial.endswith(f"score (e.g., 2), \n {w}explanation (within 20 words).")
    assert f"in the image. {w}Give a score" in scot.question("non_spatial", "a man walks a dog")
    assert scot.question("numeracy", "two dogs").startswith(" According to")
    assert f"criteria: \n{w}5: correct numerical" in scot.question("numeracy", "two dogs")
    turn = scot.rate_turn("complex", "a red cup on a table", "A cup.")
    assert turn.startswith(scot.SYSTEM + " USER: <image>\nYou are my assistant to evaluate the correspondence")
    assert "ASSISTANT:A cup.</s> USER: According to" in turn and turn.endswith("(within 20 words). ASSISTANT:")
    with pytest.raises(ValueError, match="B-VQA for color"):
        scot.question("color", "a red cup")


@pytest.mark.parametrize(("answer", "level"), [
    ('{"score": 4, "explanation": "mostly right"}', 4),
    ('{"score": "3", "explanation": "the cat is miss', 3),  # cut off: upstream closes the string and the brace
    ('{\n"score": 5,\n"explanation": "ok"\n}', 5),
    ("The score is 4.", None), ('{"score": 7}', None), ('{"score": 4.5}', None), ('{"rating": 4}', None), ("", None)])
def test_scot_answers_are_read_like_upstream(answer, level):
    assert scot.parse_level(answer) == level


def test_scot_image_score_is_the_level_product_and_unreadable_answers_count_as_full_marks():
    assert scot.image_score(['{"score": 4}']) == pytest.approx(0.8)
    assert scot.image_score(['{"score": 4}', '{"score": 2}']) == pytest.approx(0.32)
    assert scot.image_score(["I cannot tell."]) == 1.0


@pytest.fixture(scope="module")
def small_judge(clip_tokenizer):
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = clip_tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 28},
                                                                  crop_size={"height": 28, "width": 28}),
                               tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        text_config={"model_type": "llama", "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                     "pad_token_id": tok.pad_token_id},
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=4)
    return scot.ShareGPT4VJudge(LlavaForConditionalGeneration(config), processor, "cpu", max_new_tokens=6)


def test_scot_judge_runs_the_two_turn_conversation_seeded_per_image(small_judge, monkeypatch):
    image = Image.fromarray((np.random.default_rng(1).random((40, 30, 3)) * 255).astype(np.uint8))
    first = small_judge.conversation(image, "a dog chasing a ball", "non_spatial", key=3)
    assert first == small_judge.conversation(image, "a dog chasing a ball", "non_spatial", key=3)
    assert all(isinstance(text, str) for text in first)

    asked = []
    replies = iter(["A dog runs.", '{"score": 4, "explanation": "ball missing"}'])
    monkeypatch.setattr(scot.ShareGPT4VJudge, "_reply", lambda self, text, im: asked.append((text, im.size))
                        or next(replies))
    assert small_judge.score(image, "a dog chasing a ball", "non_spatial") == pytest.approx(0.8)
    assert asked[0][0] == scot.describe_turn("non_spatial")
    assert asked[1][0] == scot.rate_turn("non_spatial", "a dog chasing a ball", "A dog runs.")
    assert asked[0][1] == (40, 40)  # padded to a square, as LLaVA's image_aspect_ratio "pad"


def test_scot_judge_from_an_unconvertible_checkpoint_says_how_to_convert(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="convert_llava_weights_to_hf"):
        scot.ShareGPT4VJudge.from_pretrained(tmp_path / "not-a-model", device="cpu")


FAKE_SHARE_EVAL = """
import argparse, json, pathlib
ap = argparse.ArgumentParser()
ap.add_argument("--file-path")
ap.add_argument("--category")
ap.add_argument("--cot", action="store_true")
args = ap.parse_args()
assert args.cot and args.category == "action", (args.cot, args.category)
root = pathlib.Path(args.file_path)
names = sorted(p.name for p in (root / "samples").glob("*.png"))
(root / "sharegpt4v").mkdir(exist_ok=True)
(root / "sharegpt4v" / "vqa_result.json").write_text(json.dumps(
    [{"question_id": int(n.rsplit("_", 1)[1][:-4]), "answer": 20.0 * (i + 1)} for i, n in enumerate(names)]))
"""


def test_official_scot_runs_upstreams_script_and_rescales_to_0_1(tmp_path):
    from flux158.eval.t2i_compbench.official import JUDGE_DIR, OfficialRunner
    from flux158.eval.t2i_compbench.scoring import score_category

    checkout = tmp_path / "T2I-CompBench"
    (checkout / JUDGE_DIR).mkdir(parents=True)
    (checkout / JUDGE_DIR / "Share_eval.py").write_text(FAKE_SHARE_EVAL)
    category = tmp_path / "non_spatial"
    _write(category, [f"b man walks_{k:06d}.png" for k in range(2)] + [f"a dog runs_{2 + k:06d}.png" for k in range(2)])
    result = score_category(category, "non_spatial", ["b man walks", "a dog runs"], 2,
                            judge=OfficialRunner(checkout, sys.executable), progress=False)
    # name order puts "a dog runs" (ids 2, 3) first: 20, 40; then ids 0, 1: 60, 80; divided by 100
    assert [r["score"] for r in result.rows] == pytest.approx([0.6, 0.8, 0.2, 0.4])
    assert result.metric == "s-cot (official)"


def test_unidet_labels_are_derived_from_the_weights_only_pickle_and_checked(tmp_path, monkeypatch, pinned_text):
    import urllib.request

    from flux158.data.pinned import fetch
    from flux158.data.sources import UNIDET_LABELS
    from flux158.errors import PromptDataError
    from flux158.eval.t2i_compbench.vocabulary import read_unidet_labels

    labels = pinned_text(UNIDET_LABELS).splitlines()
    pickle = io.BytesIO()
    torch.save({"labels": labels, "features": torch.zeros(722, 2)}, pickle)
    served = {"bytes": pickle.getvalue()}
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(served["bytes"]))
    got = read_unidet_labels(fetch(UNIDET_LABELS, tmp_path / "cache", offline=False))
    assert got == labels and got[4] == "wild bird"
    tampered = io.BytesIO()
    torch.save({"labels": ["bird" if i == 4 else x for i, x in enumerate(labels)]}, tampered)
    served["bytes"] = tampered.getvalue()
    with pytest.raises(PromptDataError, match="sha256 mismatch"):
        fetch(UNIDET_LABELS, tmp_path / "other-cache", offline=False)
    assert not list((tmp_path / "other-cache").rglob("*.txt"))


def test_experiment_scores_all_eight_categories_in_this_environment(compose, small_judge, monkeypatch):
    from flux158.eval.t2i_compbench import bvqa, clipscore, depth, native
    from flux158.experiments import evaluate, generate

    dog, cat = Detection("dog", (0, 0, 10, 10), 0.9), Detection("cat", (100, 0, 110, 10), 0.8)
    loaded = {}

    def fake_detector(cls, labels, model_id, **kwargs):
        loaded["labels"], loaded["model"] = list(labels), model_id
        return _FixedDetector([dog, cat])

    class _Half:
        def score(self, image, questions):
            return 0.5

    monkeypatch.setattr(native.NativeDetector, "from_pretrained", classmethod(fake_detector))
    monkeypatch.setattr(scot.ShareGPT4VJudge, "from_pretrained", classmethod(lambda cls, *a, **k: small_judge))
    monkeypatch.setattr(scot.ShareGPT4VJudge, "_reply",
                        lambda self, text, image: '{"score": 3}' if "According to" in text else "An image.")
    monkeypatch.setattr(bvqa.BlipVQA, "from_pretrained", classmethod(lambda cls, **kwargs: _Half()))
    monkeypatch.setattr(bvqa, "load_spacy", lambda: _Tagger())
    monkeypatch.setattr(clipscore.CLIPScore, "from_pretrained", classmethod(lambda cls, **kwargs: None))
    monkeypatch.setattr(depth.DepthEstimator, "from_pretrained", classmethod(lambda cls, **kwargs: _FlatDepth()))
    cfg = compose("experiment=t2i_compbench", "model=tiny", "logger=none", "benchmark.limit_per_group=1",
                  "benchmark.samples_per_prompt=1", "benchmark.evaluator_weights=pretrained",
                  "benchmark.detector=native", "benchmark.judge=native",
                  "benchmark.judge_model=/models/sharegpt4v-7b-hf")
    generate.run(cfg)
    metrics = json.loads((evaluate.run(cfg) / "metrics.json").read_text())
    assert len(loaded["labels"]) == 722 and loaded["model"] == native.OWLV2
    scores = metrics["metrics"]
    assert set(scores) == {"color", "shape", "texture", "spatial", "3d_spatial", "non_spatial", "numeracy",
                           "complex", "average"} and metrics["evaluator"]["not_scored"] == {}
    assert scores["color"] == scores["texture"] == pytest.approx(0.5)
    assert scores["non_spatial"] == scores["complex"] == pytest.approx(0.6)  # S-CoT level 3
    assert scores["average"] == pytest.approx(sum(v for k, v in scores.items() if k != "average") / 8)
    assert metrics["evaluator"]["metrics"]["spatial"] == "unidet-2d (native)"
    assert metrics["evaluator"]["metrics"]["complex"] == "s-cot (native)"


def test_paper_metrics_are_the_default_and_classic_ones_selectable(compose):
    from flux158.eval.t2i_compbench.evaluator import protocol_for
    from flux158.experiments.evaluate import t2i_protocol

    def protocol(cfg):
        return protocol_for(t2i_protocol(cfg), cfg.benchmark.evaluator_weights)

    base = ("experiment=t2i_compbench", "model=tiny", "logger=none", "benchmark.evaluator_weights=pretrained")
    chosen = protocol(compose(*base))
    assert [chosen.label(c) for c in ("color", "spatial", "non_spatial", "complex")] == [
        "b-vqa", "unidet-2d (official)", "s-cot (official)", "s-cot (official)"]
    classic = protocol(compose(*base, "benchmark.metrics.non_spatial=clipscore", "benchmark.metrics.complex=3-in-1"))
    assert classic.needs(["non_spatial"]) == {"clip"} and classic.metric("complex") == "3-in-1"
    with pytest.raises(ValueError, match="color is scored with one of"):
        protocol(compose(*base, "benchmark.metrics.color=s-cot"))
    # random evaluator weights (the tiny model's default) have no official runner: native shrunk models
    assert protocol(compose(*base[:3])).label("spatial") == "unidet-2d (native)"



def test_tiny_model_plumbing_run_scores_all_eight_categories_with_random_evaluators(compose):
    """experiment=t2i_compbench model=tiny: every category through shrunk random BLIP/CLIP/DPT/OWLv2/LLaVA."""
    from flux158.experiments import evaluate, generate

    cfg = compose("experiment=t2i_compbench", "model=tiny", "logger=none", "benchmark.limit_per_group=1",
                  "benchmark.samples_per_prompt=1", "benchmark.metrics.complex=3-in-1")
    generate.run(cfg)
    metrics = json.loads((evaluate.run(cfg) / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"color", "shape", "texture", "spatial", "3d_spatial", "non_spatial",
                                       "numeracy", "complex", "average"}
    assert all(0.0 <= v <= 1.0 for v in metrics["metrics"].values())
    assert metrics["evaluator"]["weights"] == "random"
    assert metrics["evaluator"]["metrics"]["complex"] == "3-in-1 (2D native)"


def test_cli_scores_with_the_native_detector_and_shrunk_models(tmp_path, capsys, pinned_path):
    from flux158.data.sources import T2I_NUMERACY_OBJECTS, UNIDET_LABELS
    from flux158.eval.t2i_compbench.__main__ import main

    category = tmp_path / "numeracy"
    _write(category, [f"two dogs_{k:06d}.png" for k in range(2)])
    args = [str(category), "--category", "numeracy", "--samples", "2", "--detector", "native"]
    assert main(args) == 2
    assert "needs --numeracy-objects" in capsys.readouterr().err
    args += ["--numeracy-objects", str(pinned_path(T2I_NUMERACY_OBJECTS))]
    assert main(args) == 2
    assert "needs --unidet-labels" in capsys.readouterr().err
    args += ["--unidet-labels", str(pinned_path(UNIDET_LABELS))]
    assert main([*args, "--random-weights"]) == 0
    assert "numeracy (unidet-count (native)):" in capsys.readouterr().out
    written = json.loads((category / "t2i_compbench" / "metrics.json").read_text())
    assert written["num_images"] == 2 and 0.0 <= written["score"] <= 1.0


def test_cli_and_stage_write_the_same_metrics_for_the_same_folder(compose, tmp_path, pinned_path):
    from flux158.data.sources import T2I_NUMERACY_OBJECTS, UNIDET_LABELS

    """One evaluator object behind both: the stage's metrics.json, less its provenance, equals the CLI's."""
    from flux158.eval.t2i_compbench.__main__ import main
    from flux158.experiments import evaluate, generate, provenance

    cfg = compose("experiment=t2i_compbench", "model=tiny", "logger=none", "benchmark.limit_per_group=1",
                  "benchmark.samples_per_prompt=2", "benchmark.categories=[color,numeracy,spatial,non_spatial]")
    images = generate.run(cfg)
    stage = json.loads((evaluate.run(cfg) / "metrics.json").read_text())
    assert main([str(images), "--random-weights", "--seed", str(cfg.seed), "--samples", "2", "--out",
                 str(tmp_path / "cli"), "--numeracy-objects", str(pinned_path(T2I_NUMERACY_OBJECTS)),
                 "--unidet-labels", str(pinned_path(UNIDET_LABELS))]) == 0
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    provenance_fields = {"model", "quant", "benchmark", "config_hash", "images_dir", "random_weights",
                         "paper_protocol", "protocol_deviations", "pairing_key", *provenance.environment()}
    assert {k: v for k, v in stage.items() if k not in provenance_fields} == cli
    assert set(cli["metrics"]) == {"color", "numeracy", "spatial", "non_spatial", "average"}
    assert cli["num_images"] == 8 and cli["evaluator"]["numeracy_parser"] == "2024-11"
