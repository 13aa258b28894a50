"""Whether an evaluation followed the paper's protocol (arXiv 2412.18653 and the benchmarks' official setups), and
where it did not. Recorded in `metrics.json`; the tables put only protocol runs beside the paper's numbers."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from flux158.data.sources import T2I_COMPBENCH_CATEGORIES
from flux158.eval.t2i_compbench.scoring import PAPER_METRICS

# FLUX.1-dev at 1024², 50 steps, guidance 3.5 (paper §4, Table 3), every prompt, the real evaluator models.
_COMMON = {
    "model.name": "flux-dev",
    "sampler.num_inference_steps": 50,
    "sampler.guidance_scale": 3.5,
    "sampler.height": 1024,
    "sampler.width": 1024,
    "sampler.max_sequence_length": 512,
    "benchmark.limit_per_group": None,
    "benchmark.evaluator_weights": "pretrained",
}
PAPER_PROTOCOL: dict[str, dict[str, Any]] = {
    # GenEval @af4902f: 553 prompts x 4 images, Mask2Former Swin-S (pinned weights), CLIP ViT-L/14 colours
    "geneval": {**_COMMON, "benchmark.prompt_set": "geneval", "benchmark.samples_per_prompt": 4,
                "benchmark.detector": "mmdet", "benchmark.detector_checkpoint": None, "benchmark.threshold": 0.3,
                "benchmark.counting_threshold": 0.9, "benchmark.clip_model": "ViT-L-14",
                "benchmark.clip_pretrained": "openai"},
    # T2I-CompBench val @33d6305: 8 categories x 300 prompts x 10 images, the paper's metric per category (Table 1)
    "t2i_compbench": {**_COMMON, "benchmark.prompt_set": "t2i_compbench_val", "benchmark.samples_per_prompt": 10,
                      "benchmark.categories": list(T2I_COMPBENCH_CATEGORIES), "benchmark.detector": "official",
                      "benchmark.judge": "official", "benchmark.metrics": dict(PAPER_METRICS)},
}


def _value(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def deviations(cfg: DictConfig) -> list[str]:
    """How this run differs from the paper's protocol for its benchmark, one `key=value (paper: value)` each;
    empty for a paper-protocol run. A benchmark the paper did not report (the toy world) is one deviation."""
    protocol = PAPER_PROTOCOL.get(cfg.benchmark.name)
    if protocol is None:
        return [f"benchmark={cfg.benchmark.name} (the paper reports geneval and t2i_compbench)"]
    found = [f"{key}={_value(cfg, key)!r} (paper: {expected!r})" for key, expected in protocol.items()
             if _value(cfg, key) != expected]
    if cfg.model.get("random_weights"):
        found.insert(0, "random weights")
    return found
