"""T2I-CompBench evaluator parts: the category folder check and CLIPScore with a random small CLIP."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flux158.eval.errors import IncompleteFolderError
from flux158.eval.t2i_compbench.clipscore import CLIPScore
from flux158.eval.t2i_compbench.folder import check_complete


def _write(category, names):
    (category / "samples").mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8)).save(category / "samples" / name)


def test_category_folder_must_hold_every_prompt_in_counter_order(tmp_path):
    prompts = ["a red car", "a blue bench"]
    category = tmp_path / "color"
    _write(category, [f"a red car_{k:06d}.png" for k in range(3)] + [f"a blue bench_{3 + k:06d}.png" for k in range(2)])
    _write(category, ["notes.png", "a blue bench_000099.png"])  # ignored / not expected
    with pytest.raises(IncompleteFolderError, match=r"missing a blue bench_000005.png"):
        check_complete(category, prompts, samples_per_prompt=3)
    _write(category, ["a blue bench_000005.png"])
    samples = check_complete(category, prompts, samples_per_prompt=3)
    assert [(s.prompt, s.counter) for s in samples] == [("a red car", 0), ("a red car", 1), ("a red car", 2),
                                                        ("a blue bench", 3), ("a blue bench", 4),
                                                        ("a blue bench", 5)]
    _write(category, ["a green bench_000003.png"])  # the right counter under another prompt does not count
    (category / "samples" / "a blue bench_000003.png").unlink()
    with pytest.raises(IncompleteFolderError, match="a blue bench_000003.png"):
        check_complete(category, prompts, samples_per_prompt=3)


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from flux158.models.tokenizers import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(tmp_path_factory.mktemp("clip-tok"))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": tokenizer.vocab_size, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 224, "patch_size": 32}, projection_dim=16)
    return CLIPScore(CLIPModel(config), tokenizer, CLIPImageProcessor(), "cpu")


def test_clipscore_is_the_raw_cosine_after_openai_preprocessing(small_clip):
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((112, 140, 3)) * 255).astype(np.uint8))
    text = "a man riding a horse"
    # OpenAI's transform, by hand: bicubic resize of the short side to 224 (-> 224 x 280), centre crop 224,
    # scale to [0, 1], normalise with CLIP's mean and std
    resized = np.asarray(image.resize((280, 224), Image.BICUBIC), dtype=np.float32)[:, 28:252] / 255.0
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    pixels = torch.tensor(((resized - mean) / std).transpose(2, 0, 1)[None], dtype=torch.float32)
    model = small_clip.model
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        txt = model.text_projection(model.text_model(**small_clip.tokenizer(text, return_tensors="pt")).pooler_output)
    expected = F.cosine_similarity(img, txt).item()
    assert small_clip.score(image, text) == pytest.approx(expected, abs=1e-4)
    assert -1.0 <= expected <= 1.0


def test_clipscore_refuses_prompts_longer_than_77_tokens(small_clip):
    with pytest.raises(ValueError, match="longer than CLIP's 77 tokens"):
        small_clip.score(np.zeros((32, 32, 3), dtype=np.uint8), " ".join(["dog"] * 100))


def test_questions_from_a_fixed_parse():
    from flux158.eval.t2i_compbench.bvqa import pre_question, questions_from_phrases

    chunks = ["A Green (Bench)", "the left", "a blue car!", "top", *[f"thing {i}" for i in range(10)]]
    qs = questions_from_phrases(chunks)
    assert qs[:2] == ["a green bench?", "a blue car?"] and len(qs) == 8  # filtered, then the first 8
    assert pre_question(" ".join(["word"] * 60) + "?") == " ".join(["word"] * 50)


@pytest.fixture(scope="module")
def small_blip(tmp_path_factory):
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor

    from flux158.eval.t2i_compbench.bvqa import BlipVQA

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "green", "bench", "blue", "car", "?", "yes", "no",
             "[DEC]", "[ENC]"]
    path = tmp_path_factory.mktemp("blip-tok") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(path), additional_special_tokens=["[DEC]", "[ENC]"])
    torch.manual_seed(0)
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "encoder_hidden_size": 32, "bos_token_id": vocab.index("[DEC]"),
            "pad_token_id": 0, "sep_token_id": vocab.index("[SEP]")}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 64, "patch_size": 16}
    model = BlipForQuestionAnswering(BlipConfig(text_config=text, vision_config=vision))
    processor = BlipImageProcessor(size={"height": 64, "width": 64})
    return BlipVQA(model, tokenizer, processor, "cpu")


def test_bvqa_feeds_enc_and_the_padded_question_mask(small_blip):
    seen = {}
    enc = small_blip.model.text_encoder.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(ids=kwargs["input_ids"].clone()), with_kwargs=True)
    dec = small_blip.model.text_decoder.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(mask=kwargs["encoder_attention_mask"].clone()), with_kwargs=True)
    image = np.full((40, 50, 3), 120, dtype=np.uint8)
    try:
        probs = small_blip.yes_probabilities(image, ["a green bench?", "a car?"])
    finally:
        enc.remove()
        dec.remove()
    assert (seen["ids"][:, 0] == small_blip.enc_id).all()  # [ENC], not [CLS]
    # [CLS] a green bench ? [SEP] and [CLS] a car ? [SEP] [PAD]: the padded question mask
    assert seen["mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]
    assert all(0 < p < 1 and p == round(p, 4) for p in probs)


def test_bvqa_image_score_is_the_rounded_product(small_blip, monkeypatch):
    monkeypatch.setattr(type(small_blip), "yes_probabilities", lambda self, image, qs: [0.5123, 0.25, 0.9999][:len(qs)])
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    assert small_blip.score(image, ["a?", "b?", "c?"]) == 0.1281  # 0.5123 * 0.25 * 0.9999 = 0.12806..., 4 decimals
    assert small_blip.score(image, []) == 1.0  # no noun phrase: nothing to doubt


# worked by hand: short side -> 479, long = int(479 * long / short); above 480 it is capped at 480 and the short
# side becomes int(480 * 479 / uncapped long): 1024x768 -> 638 -> (480, 360); 400x600 -> 718 -> (320, 480);
# 480x470 -> 489 -> (480, 470)
@pytest.mark.parametrize(("size", "expected"), [((1024, 1024), (479, 479)), ((1024, 768), (480, 360)),
                                                ((400, 600), (320, 480)), ((480, 470), (480, 470))])
def test_detector_resolution_is_torchvisions_resize_479_max_480(size, expected):
    from flux158.eval.t2i_compbench.depth import TO_DETECTOR_RESOLUTION

    assert TO_DETECTOR_RESOLUTION(Image.new("L", size)).size == expected


def test_depth_map_is_normalised_quantised_and_resized():
    from transformers import DPTConfig, DPTForDepthEstimation

    from flux158.eval.t2i_compbench.depth import DepthEstimator

    torch.manual_seed(0)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16, head_hidden_size=8)
    estimator = DepthEstimator(DPTForDepthEstimation(config), "cpu")
    image = Image.fromarray((np.random.default_rng(0).random((80, 100, 3)) * 255).astype(np.uint8))
    inverse = estimator.inverse_depth(image)
    # min-max normalised at the model's resolution, then interpolated: stays inside [0, 1]
    assert inverse.shape == (80, 100) and inverse.min() >= 0.0 and inverse.max() <= 1.0 and np.ptp(inverse) > 0
    space = estimator.detector_space(image)
    assert space.shape == (384, 480)  # 100 x 80 -> (480, int(480 * 479 / 598)) = (480, 384)
    assert np.allclose(space * 255, np.round(space * 255))  # 8-bit levels


class _Doc(list):
    pass


class _Chunks:
    """A fixed parse: noun chunks are the ' and '-separated parts of the prompt; words tagged ADJ when they are
    colors, NOUN otherwise."""

    def __call__(self, text):
        doc = _Doc(type("Token", (), {"text": w, "pos_": "ADJ" if w in ("red", "blue", "green") else "NOUN"})()
                   for w in text.split())
        doc.noun_chunks = [type("Span", (), {"text": t})() for t in text.split(" and ")]
        return doc


def test_score_category_with_bvqa_and_clipscore(tmp_path, small_blip, small_clip, monkeypatch):
    from flux158.eval.t2i_compbench.scoring import CLASSIC_METRICS, Protocol, score_category

    category = tmp_path / "color"
    _write(category, [f"a green bench and a blue car_{k:06d}.png" for k in range(2)]
           + [f"a blue bench_{2 + k:06d}.png" for k in range(2)])
    asked = []
    monkeypatch.setattr(type(small_blip), "yes_probabilities",
                        lambda self, image, qs: asked.append(list(qs)) or [0.5] * len(qs))
    result = score_category(category, "color", samples_per_prompt=2, bvqa=small_blip, nlp=_Chunks(), progress=False)
    assert asked[0] == ["a green bench?", "a blue car?"] and asked[-1] == ["a blue bench?"]
    assert [r["score"] for r in result.rows] == [0.25, 0.25, 0.5, 0.5] and result.score == pytest.approx(0.375)
    assert (result.metric, [r["question_id"] for r in result.rows]) == ("b-vqa", [0, 1, 2, 3])

    clip_result = score_category(category, "non_spatial", samples_per_prompt=2, clip=small_clip, progress=False,
                                 protocol=Protocol(CLASSIC_METRICS))
    assert clip_result.metric == "clipscore" and len(clip_result.rows) == 4
    with pytest.raises(ValueError, match=r"non_spatial \(s-cot \(official\)\) needs judge"):  # the paper's default
        score_category(category, "non_spatial", samples_per_prompt=2, clip=small_clip)
    with pytest.raises(ValueError, match="needs detector"):
        score_category(category, "numeracy", samples_per_prompt=2)
    with pytest.raises(IncompleteFolderError):
        score_category(category, "color", ["a green bench and a blue car", "a blue bench", "a cat"], 2,
                       bvqa=small_blip, nlp=_Chunks())


def test_cli_refuses_what_it_cannot_score(tmp_path, capsys):
    from flux158.eval.t2i_compbench.__main__ import main

    category = tmp_path / "spatial"
    _write(category, ["a dog on the left of a cat_000000.png"])
    assert main([str(category), "--category", "spatial", "--samples", "1"]) == 2
    assert "needs --official-checkout or --detector native" in capsys.readouterr().err
    assert main([str(category), "--category", "spatial", "--metric", "clipscore"]) == 2
    assert "spatial is scored with one of ('unidet-2d', 's-cot'), not 'clipscore'" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing"), "--category", "color"]) == 2
    assert "does not exist" in capsys.readouterr().err
    color = tmp_path / "color"
    _write(color, ["a red car_000000.png"])
    assert main([str(color), "--category", "color", "--samples", "2"]) == 2  # checked before any model loads
    assert "missing a red car_000001.png" in capsys.readouterr().err
    _write(color, ["a red car_000001.png"])
    assert main([str(color), "--category", "color", "--samples", "2"]) == 2  # offline: a clear message
    assert "cannot load Salesforce/blip-vqa-capfilt-large" in capsys.readouterr().err


FAKE_SCRIPT = """
import argparse, json, os, pathlib, sys
ap = argparse.ArgumentParser()
ap.add_argument("--outpath")
ap.add_argument("--complex", type=bool, default=False)
args = ap.parse_args()
assert os.path.basename(os.getcwd()) == "UniDet_eval", os.getcwd()
out = pathlib.Path(args.outpath) / RESULT
out.parent.mkdir(parents=True, exist_ok=True)
names = sorted(p.name for p in (pathlib.Path(args.outpath) / "samples").glob("*.png"))
out.write_text(json.dumps([{"question_id": int(n.rsplit("_", 1)[1][:-4]), "answer": 0.25 * (i + 1)}
                           for i, n in enumerate(names)]))
"""


def _fake_checkout(root, script, result):
    """A git checkout (the stage keys an official checkout by its commit) holding one fake upstream script."""
    (root / "UniDet_eval").mkdir(parents=True)
    (root / "UniDet_eval" / script).write_text(f"RESULT = {result!r}\n" + FAKE_SCRIPT)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)
    return root


def test_official_runner_runs_the_upstream_script_and_reads_its_results(tmp_path, capsys):
    import sys

    from flux158.eval.t2i_compbench.__main__ import main
    from flux158.eval.t2i_compbench.official import OfficialRunner, OfficialRunnerError
    from flux158.eval.t2i_compbench.scoring import score_category

    checkout = _fake_checkout(tmp_path / "T2I-CompBench", "numeracy_eval.py", "annotation_num/vqa_result.json")
    category = tmp_path / "numeracy"
    _write(category, [f"two dogs_{k:06d}.png" for k in range(2)] + [f"three cats_{2 + k:06d}.png" for k in range(2)])
    (category / "annotation_num").mkdir()
    (category / "annotation_num" / "vqa_result.json").write_text("[]")  # stale: must be replaced
    runner = OfficialRunner(checkout, sys.executable)
    result = score_category(category, "numeracy", samples_per_prompt=2, detector=runner, progress=False)
    # the fake scores files in name order ("three cats" first); rows follow question_id, not file order
    assert [r["score"] for r in result.rows] == [0.75, 1.0, 0.25, 0.5] and result.score == pytest.approx(0.625)
    assert result.metric == "unidet-count (official)"
    assert main([str(category), "--category", "numeracy", "--samples", "2", "--unidet-checkout", str(checkout),
                 "--unidet-python", sys.executable]) == 0
    assert "numeracy (unidet-count (official)): 0.6250 over 4 images" in capsys.readouterr().out
    with pytest.raises(OfficialRunnerError, match="not found"):
        OfficialRunner(tmp_path / "elsewhere", sys.executable).run("numeracy", category)


def test_complex_is_three_in_one_with_the_complex_mode_runner(tmp_path, small_blip, small_clip, monkeypatch):
    import sys

    from flux158.eval.t2i_compbench.official import OfficialRunner
    from flux158.eval.t2i_compbench.scoring import CLASSIC_METRICS, Protocol, score_category

    checkout = _fake_checkout(tmp_path / "T2I-CompBench", "2D_spatial_eval.py",
                              "labels/annotation_obj_detection_2d/vqa_result.json")
    category = tmp_path / "complex"
    prompts = ["a red cup on the left of a book", "a man walks a blue dog"]
    _write(category, [f"{prompts[0]}_{k:06d}.png" for k in range(2)]
           + [f"{prompts[1]}_{2 + k:06d}.png" for k in range(2)])
    monkeypatch.setattr(type(small_blip), "yes_probabilities", lambda self, image, qs: [0.5] * len(qs))
    texts = []
    monkeypatch.setattr(type(small_clip), "score", lambda self, image, text: texts.append(text) or 0.3)
    classic = Protocol(CLASSIC_METRICS)
    result = score_category(category, "complex", prompts, 2, protocol=classic, bvqa=small_blip, nlp=_Chunks(),
                            clip=small_clip, detector=OfficialRunner(checkout, sys.executable),
                            complex_subtypes=([prompts[0]], [prompts[1]]), progress=False)
    # fake 2D scores by file name order: "a man..." files get 0.25, 0.5, "a red cup..." files 0.75, 1.0
    # spatial prompt: (2D + attribute 0.5) / 2; action prompt: (CLIP 0.3 + attribute 0.5) / 2
    assert [r["score"] for r in result.rows] == pytest.approx([0.625, 0.75, 0.4, 0.4])
    assert texts[0] == "a cup on the left of a book"  # adjectives dropped for CLIP in complex mode
    assert result.metric == "3-in-1 (2D official)"
    with pytest.raises(ValueError, match="needs complex_subtypes"):
        score_category(category, "complex", prompts, 2, protocol=classic, bvqa=small_blip, nlp=_Chunks(),
                       clip=small_clip, detector=OfficialRunner(checkout, sys.executable))


def test_experiment_t2i_compbench_scores_its_categories(compose, tmp_path, small_blip, small_clip, monkeypatch):
    import json
    import sys

    from flux158.eval.t2i_compbench import bvqa, clipscore
    from flux158.experiments import evaluate, generate

    checkout = _fake_checkout(tmp_path / "T2I-CompBench", "numeracy_eval.py", "annotation_num/vqa_result.json")
    monkeypatch.setattr(bvqa.BlipVQA, "from_pretrained", classmethod(lambda cls, **kwargs: small_blip))
    monkeypatch.setattr(bvqa, "load_spacy", lambda: _Chunks())
    monkeypatch.setattr(clipscore.CLIPScore, "from_pretrained", classmethod(lambda cls, **kwargs: small_clip))
    common = ["experiment=t2i_compbench", "model=tiny", "logger=none", "benchmark.limit_per_group=2",
              "benchmark.samples_per_prompt=2", "benchmark.categories=[color,non_spatial,numeracy]",
              "benchmark.metrics.non_spatial=clipscore"]
    generate.run(compose(*common))
    cfg = compose(*common, "benchmark.evaluator_weights=pretrained", f"benchmark.official_checkout={checkout}",
                  f"benchmark.unidet_python={sys.executable}")
    out = evaluate.run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    scores = metrics["metrics"]
    assert set(scores) == {"color", "non_spatial", "numeracy", "average"} and metrics["num_images"] == 3 * 2 * 2
    # the stand-in UniDet script scores the 4 numeracy files 0.25 .. 1.0
    assert scores["numeracy"] == pytest.approx(0.625)
    assert scores["average"] == pytest.approx((scores["color"] + scores["non_spatial"] + scores["numeracy"]) / 3)
    rows = [json.loads(r) for r in (out / "results.jsonl").read_text().splitlines()]
    assert {r["metric"] for r in rows} == {"b-vqa", "clipscore", "unidet-count (official)"}
    # without a UniDet checkout numeracy is skipped, and no average of the configured categories is claimed
    cfg = compose(*common, "benchmark.evaluator_weights=pretrained")
    metrics = json.loads((evaluate.run(cfg) / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"color", "non_spatial"} and "numeracy" in metrics["evaluator"]["not_scored"]
