"""Stage `evaluate`: score the generate stage's images with the benchmark's evaluator; write `metrics.json`."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf

from flux158.artifacts import atomic_write, atomic_write_text, is_done
from flux158.data import sources
from flux158.data.pinned import fetch
from flux158.data.prompts import load_complex_subtypes
from flux158.errors import Flux158Error, ShardsPending
from flux158.eval.errors import BadInputError, WeightsUnavailableError
from flux158.eval.evaluator import Evaluator, GenEvalEvaluator, ToyWorldEvaluator, metrics_record
from flux158.eval.fidelity import ClipSimilarity, Perceptual, image_fidelity
from flux158.eval.geneval.build import build_scorer, register_tiny_clip
from flux158.eval.geneval.detector import DetectorUnavailableError
from flux158.eval.geneval.folder import IncompleteFolderError
from flux158.eval.intervals import as_json, comparison_json, paired_comparison, score_intervals
from flux158.eval.t2i_compbench.evaluator import TextData as T2ITextData
from flux158.eval.t2i_compbench.evaluator import build_evaluator as build_t2i_compbench
from flux158.eval.t2i_compbench.evaluator import protocol_for
from flux158.eval.t2i_compbench.scoring import CATEGORIES, ModelSettings, Protocol
from flux158.eval.t2i_compbench.vocabulary import read_numeracy_objects, read_unidet_labels
from flux158.experiments import artifact_dirs, processes, protocol, provenance, resolve, tracking
from flux158.generation.images import missing_images
from flux158.generation.layouts import make_layout
from flux158.toyworld.scenes import BACKGROUND, PALETTE

log = logging.getLogger(__name__)

def _evaluator(cfg: DictConfig) -> Evaluator:
    """The benchmark's evaluator, built from the config (`flux158.eval.evaluator`): translation only."""
    bench = cfg.benchmark
    evaluator = bench.get("evaluator")
    if evaluator == "toyworld":
        return ToyWorldEvaluator(PALETTE, BACKGROUND, bench.threshold, bench.counting_threshold,
                                 bench.get("min_area"))
    _, _, device = processes.process()
    if evaluator == "geneval":
        log.info("evaluate: GenEval with the %s detector (%s weights) and open_clip %s/%s on %s", bench.detector,
                 bench.evaluator_weights, bench.clip_model, bench.clip_pretrained, device)
        scorer = build_scorer(bench.detector, bench.evaluator_weights, str(device),
                              Path(bench.detector_checkpoint) if bench.get("detector_checkpoint") else None,
                              bench.clip_model, bench.clip_pretrained, Path(cfg.paths.cache_dir) / "eval",
                              bool(bench.get("trust_checkpoint", False)))
        scorer.threshold, scorer.counting_threshold = bench.threshold, bench.counting_threshold
        return GenEvalEvaluator(scorer, [item.index for item in resolve.prompts(cfg)], bench.samples_per_prompt)
    if evaluator == "t2i_compbench":
        categories = list(bench.categories or CATEGORIES)
        protocol = t2i_protocol(cfg)
        prompts: dict[str, list[str]] = {}
        for item in sorted(resolve.prompts(cfg), key=lambda i: i.index):
            prompts.setdefault(item.group, []).append(item.prompt)
        settings = ModelSettings(device=str(device), cache_dir=Path(cfg.paths.cache_dir) / "eval",
                                 bvqa_image_size=bench.bvqa_image_size,
                                 official_checkout=Path(bench.official_checkout) if bench.official_checkout else None,
                                 unidet_python=bench.unidet_python, judge_python=bench.judge_python,
                                 judge_model=bench.judge_model, detector_model=bench.detector_model)
        needed = protocol_for(protocol, bench.evaluator_weights).needs(categories)
        return build_t2i_compbench(categories, protocol, weights=bench.evaluator_weights, settings=settings,
                                   data=_t2i_text_data(cfg, needed, protocol_for(protocol, bench.evaluator_weights)),
                                   samples_per_prompt=bench.samples_per_prompt, prompts=prompts, seed=cfg.seed)
    raise Flux158Error(f"benchmark {bench.name!r} has no evaluator (evaluator={evaluator})")


def t2i_protocol(cfg: DictConfig) -> Protocol:
    """The configured T2I-CompBench metrics, backends and numeracy parser."""
    bench = cfg.benchmark
    return Protocol(OmegaConf.to_container(bench.metrics), bench.detector, bench.judge,
                    bench.get("numeracy_parser", "2024-11"))


def _t2i_text_data(cfg: DictConfig, needed: set[str], protocol: Protocol) -> T2ITextData:
    """The pinned text files the chosen T2I-CompBench metrics read, fetched (sha256-checked) only when needed."""
    mirror = cfg.paths.get("prompt_mirror")
    where = (Path(cfg.paths.data_dir), [Path(mirror)] if mirror else [])
    native = "detector" in needed and protocol.detector == "native"
    return T2ITextData(
        complex_subtypes=load_complex_subtypes(*where) if "complex_subtypes" in needed else None,
        numeracy_objects=(read_numeracy_objects(fetch(sources.T2I_NUMERACY_OBJECTS, *where))
                          if "numeracy_objects" in needed else None),
        unidet_labels=read_unidet_labels(fetch(sources.UNIDET_LABELS, *where)) if native else ())


def _score(cfg: DictConfig, images: Path) -> tuple[list[dict], Evaluator]:
    """The rows of `results.jsonl` and the evaluator that scored them; unavailable weights or an incomplete folder
    become one clear error."""
    try:
        evaluator = _evaluator(cfg)
        return evaluator.score(images), evaluator
    except (DetectorUnavailableError, WeightsUnavailableError, IncompleteFolderError, BadInputError) as e:
        raise Flux158Error(str(e)) from None


def _fidelity_models(cfg: DictConfig, device: str) -> tuple[Perceptual | None, ClipSimilarity | None, dict]:
    """LPIPS and CLIP for fidelity, as configured; a model whose weights are unavailable is skipped with a
    warning (and named in the result), so PSNR/SSIM are still reported."""
    fid, skipped = cfg.fidelity, {}
    random = fid.weights == "random"
    lpips = clip = None
    try:
        lpips = Perceptual(fid.lpips, pretrained_backbone=not random, device=device) if fid.lpips else None
    except WeightsUnavailableError as e:
        skipped["lpips"] = str(e)
    try:
        if fid.clip_model and random:
            clip = ClipSimilarity.from_open_clip(register_tiny_clip(), None, device)
        elif fid.clip_model:
            clip = ClipSimilarity.from_open_clip(fid.clip_model, fid.clip_pretrained, device,
                                                 Path(cfg.paths.cache_dir) / "eval")
    except WeightsUnavailableError as e:
        skipped["clip"] = str(e)
    for name, reason in skipped.items():
        log.warning("evaluate: fidelity without %s: %s", name, reason)
    return lpips, clip, skipped


def _fidelity_to_bf16(cfg: DictConfig, images: Path, rows: list[dict]) -> dict | None:
    """PSNR/SSIM, LPIPS and CLIP similarities against the BF16 model's images on the same seeds, when those exist
    (run quant=bf16 first; a sweep lists it first)."""
    if cfg.quant.name == "bf16":
        return None
    reference = artifact_dirs.generate_artifact(artifact_dirs.unquantized(cfg))[0]
    if not is_done(reference):
        log.warning("no complete BF16 images at %s: fidelity skipped (run quant=bf16 first)", reference)
        return None
    _, _, device = processes.process()
    lpips, clip, skipped = _fidelity_models(cfg, str(device))
    prompts = {r["filename"]: r["prompt"] for r in rows if "filename" in r and "prompt" in r}
    scores = image_fidelity(reference, images, "*/samples/*.png", lpips, clip, prompts)  # both layouts
    return {**scores, "reference_dir": str(reference), **({"clip_revision": clip.revision} if clip else {}),
            **({"skipped": skipped} if skipped else {})}


def _read_rows(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    return pd.read_json(path, lines=True).to_dict("records") if path.exists() and path.stat().st_size else []


def _intervals(cfg: DictConfig, rows: list[dict]) -> dict | None:
    """95 % bootstrap intervals of each tag's score and of `overall`, for pass/fail rows (GenEval, toy world)."""
    if not rows or "correct" not in rows[0]:
        return None
    resamples = int(cfg.benchmark.get("bootstrap_resamples", 10_000))
    return as_json(score_intervals(rows, resamples), resamples, 0.95)


def _retention_vs_bf16(cfg: DictConfig, rows: list[dict]) -> dict | None:
    """Score / BF16 score per tag and overall, with paired intervals (same prompts and seeds), once the BF16
    evaluation exists."""
    if cfg.quant.name == "bf16" or not rows or "correct" not in rows[0]:
        return None
    reference = artifact_dirs.evaluate_artifact(artifact_dirs.unquantized(cfg))[0]
    if not (reference / "metrics.json").exists():
        log.warning("no BF16 evaluation at %s: retention skipped (run quant=bf16 first)", reference)
        return None
    resamples = int(cfg.benchmark.get("bootstrap_resamples", 10_000))
    try:
        comparison = paired_comparison(rows, _read_rows(reference), resamples)
    except ValueError as e:
        log.warning("retention vs BF16 skipped: %s (%s)", e, reference)
        return None
    return {**comparison_json(comparison, resamples, 0.95), "reference_dir": str(reference)}


def _quantized_with(cfg: DictConfig) -> dict:
    """The quantization settings behind the images, and the quantize directory whose `metrics.json` measured the
    checkpoint (absent for BF16 and for a user-supplied checkpoint), so tables can tell apart two `distill` runs."""
    if cfg.quant.get("config") is None:
        return {}
    settings = {"quant_settings": OmegaConf.to_container(cfg.quant.config, resolve=True)}
    if not cfg.quant.get("checkpoint"):
        settings["quantize_dir"] = str(artifact_dirs.quantize_artifact(cfg)[0])
    return settings


def _backfill(cfg: DictConfig, images: Path, out: Path) -> None:
    """Add what a finished evaluation lacks: its intervals (evaluations older than them), and the fidelity and
    retention to BF16 once the BF16 results exist (in a parallel sweep the quantized jobs may finish first)."""
    metrics = json.loads((out / "metrics.json").read_text())
    rows, added = _read_rows(out), []
    if (quantized_with := _quantized_with(cfg)) and "quant_settings" not in metrics:
        metrics, _ = metrics | quantized_with, added.append("quantization settings")
    if "intervals" not in metrics and (intervals := _intervals(cfg, rows)) is not None:
        metrics["intervals"], _ = intervals, added.append("intervals")
    if "retention_vs_bf16" not in metrics and (retention := _retention_vs_bf16(cfg, rows)) is not None:
        metrics["retention_vs_bf16"], _ = retention, added.append("retention vs BF16")
    if cfg.quant.name != "bf16" and "fidelity_to_bf16" not in metrics and (
            fidelity := _fidelity_to_bf16(cfg, images, rows)) is not None:
        metrics["fidelity_to_bf16"], _ = fidelity, added.append("fidelity to BF16")
    if added:
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
        log.info("evaluate: added %s to %s", ", ".join(added), out / "metrics.json")


def run(cfg: DictConfig) -> Path:
    """Write `outputs/evaluate/<benchmark>/<model>-<quant>-<hash>/{metrics.json,results.jsonl}`.

    Once per folder: under the folder's lock, so a second process on the same config waits and then reuses the
    result. A job of a sharded array (`shard.count > 1`) whose images are not all there yet leaves the evaluation to
    the job that completes them (`ShardsPending`).
    """
    images = artifact_dirs.generate_artifact(cfg)[0]
    if not is_done(images):
        if cfg.shard.count > 1:
            raise ShardsPending(f"evaluate: the images in {images} are not all there yet (other jobs of "
                                f"shard.count={cfg.shard.count} are still generating); the shard job that completes "
                                "them evaluates them")
        raise Flux158Error(f"the images in {images} are incomplete or missing: run the generate stage first "
                           "(stages=[generate,evaluate], all shards)")
    out, determining = artifact_dirs.evaluate_artifact(cfg)
    with artifact_dirs.lock(cfg, out, "evaluate"):
        if (out / "metrics.json").exists():
            _backfill(cfg, images, out)
            log.info("evaluate: %s exists; nothing to do", out / "metrics.json")
            return out
        return _evaluate(cfg, images, out, determining)


def _check_complete(cfg: DictConfig, images: Path) -> None:
    """Every prompt's every sample must be in the folder, whole, before anything is scored: a folder that lost
    images after generate finished (deleted, truncated) is refused, not scored on fewer images."""
    samples, items = cfg.benchmark.samples_per_prompt, resolve.prompts(cfg)
    missing = missing_images(make_layout(cfg.benchmark.layout, images, samples), items, samples)
    if missing:
        raise Flux158Error(f"evaluate: {len(missing)} of the {len(items) * samples} images in {images} are missing "
                           f"or not whole (e.g. {missing[0].relative_to(images)}): run the generate stage again, "
                           "which makes only those (stages=[generate,evaluate]); nothing was scored")


def _made_from(cfg: DictConfig, determining: dict) -> dict:
    """What the images and scores were made from, by content: the hub commit or local files of the model, the
    quantized checkpoint, the evaluator checkout (as keyed by `artifact_dirs.content_keys`)."""
    made_from = {key: determining[key] for key in ("model_files_sha256", "model_weights_sha256", "checkpoint_sha256",
                                                  "official_checkout_commit") if key in determining}
    revision = OmegaConf.select(cfg, "model.spec.revision")
    return made_from | ({"model_revision": revision} if revision else {})


def _evaluate(cfg: DictConfig, images: Path, out: Path, determining: dict) -> Path:
    _check_complete(cfg, images)
    start = time.perf_counter()
    rows, evaluator = _score(cfg, images)
    scoring_seconds = time.perf_counter() - start
    record = metrics_record(evaluator, rows)
    scores = record["metrics"]
    fidelity = _fidelity_to_bf16(cfg, images, rows)
    intervals, retention = _intervals(cfg, rows), _retention_vs_bf16(cfg, rows)
    metrics = {
        "model": cfg.model.name, "quant": cfg.quant.name, "benchmark": cfg.benchmark.name,
        **provenance.random_weights(cfg), "config_hash": out.name.rsplit("-", 1)[-1], "images_dir": str(images),
        **_quantized_with(cfg), **_made_from(cfg, determining), **provenance.environment(), **record,
        "paper_protocol": not (deviations := protocol.deviations(cfg)), "protocol_deviations": deviations,
        "pairing_key": artifact_dirs.pairing_key(cfg),
    }
    for key, value in (("intervals", intervals), ("retention_vs_bf16", retention),
                       ("fidelity_to_bf16", fidelity)):
        if value is not None:
            metrics[key] = value
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(determining, sort_keys=False))
    atomic_write(out / "results.jsonl",
                 lambda tmp: pd.DataFrame(rows).to_json(tmp, orient="records", lines=True))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))  # last: its presence means complete
    with tracking.track(cfg, "evaluate") as tracker:
        tracker.summary(scores | {"num_images": len(rows), "seconds": scoring_seconds})
        tracker.artifact(out / "metrics.json", f"metrics-{cfg.benchmark.name}-{cfg.model.name}-{cfg.quant.name}",
                         "results", metrics)
        sample = rows[:: max(1, len(rows) // cfg.logger.get("max_images", 16))][: cfg.logger.get("max_images", 16)]
        verdict = ["score"] if "score" in (rows[0] if rows else {}) else ["correct", "reason"]
        tracker.image_table("results", ["tag", "prompt", *verdict, "image"],
                            [[r["tag"], r["prompt"], *(r[k] for k in verdict), images / r["filename"]]
                             for r in sample], "image")
    # last, after W&B's own summary, so that a run's final line is its scores
    log.info("evaluate: %s (%s)", ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), out / "metrics.json")
    if intervals is not None:
        low, high = intervals["overall"]
        kept = "" if retention is None else ", {estimate:.1%} of BF16 [{low:.1%}, {high:.1%}]".format(
            **retention["overall"]["retention"])
        log.info("evaluate: overall %.3f, 95 %% interval [%.3f, %.3f]%s", scores["overall"], low, high, kept)
    return out
