"""Tables 1-3, the Fig. 2 numbers and the method comparison, as DataFrames built from `records.Result`s, with the
paper's published rows beside ours and our differences from them; and their Markdown, LaTeX and CSV renderings.

Conventions: our rows are sorted by model, then quant (bf16 first), then config hash. A (model, quant) measured
under several configs is labelled with its config hash. Differences are ours minus the paper's reference row
(`reference` in the paper data: FLUX for bf16, the 1.58-bit row for quantized models).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from flux158.report.records import Result

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.yaml")
MISSING = "—"
HEADLINE = ("overall", "average")  # a benchmark's single score in metrics.json
FIDELITY = ("psnr", "ssim", "lpips", "clip_image", "clip_text")


def load_paper_numbers(path: Path = PAPER_NUMBERS) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def _ours(results: Sequence[Result], kind: str, benchmark: str | None = None) -> list[Result]:
    chosen = [r for r in results if r.kind == kind and (benchmark is None or r.benchmark == benchmark)]
    return sorted(chosen, key=lambda r: (r.model, r.quant != "bf16", r.quant, r.config_hash or ""))


def _flat(settings: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(settings, Mapping):
        return {prefix: settings}
    return {k: v for key, value in settings.items() if key != "_target_"
            for k, v in _flat(value, f"{prefix}.{key}" if prefix else str(key)).items()}


def _quant_labels(results: Sequence[Result]) -> list[str]:
    """The quant name; where one (model, quant, benchmark) has several results, followed by the quantization
    settings in which they differ (`distill (seed=1)`), or by the config hash when no recorded setting does."""
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        groups.setdefault((r.model, r.quant, r.benchmark), []).append(r)
    labels = []
    for r in results:
        group = groups[(r.model, r.quant, r.benchmark)]
        if len(group) == 1:
            labels.append(r.quant)
            continue
        flat = [_flat(g.extra.get("quant_settings") or {}) for g in group]
        keys = sorted({k for f in flat for k in f})
        differing = [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]
        mine = _flat(r.extra.get("quant_settings") or {})
        shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={mine.get(k)}" for k in differing)
        labels.append(f"{r.quant} ({shown})" if shown else f"{r.quant} ({r.config_hash})")
    return labels


def _protocol(results: Sequence[Result], paper_protocol: bool) -> list[Result]:
    return [r for r in results if bool(r.extra.get("paper_protocol")) == paper_protocol]


def _images(result: Result) -> int | None:
    count = result.extra.get("num_images")
    return int(count) if isinstance(count, numbers.Integral) else None


def benchmark_table(results: Sequence[Result], benchmark: str, paper: Mapping[str, Any]) -> pd.DataFrame:
    """Table 1 (t2i_compbench) or Table 2 (geneval): the paper's rows, then each of our paper-protocol runs
    (`metrics.json`'s `paper_protocol`: FLUX.1-dev's real weights, every prompt and sample, the paper's sampler,
    the pinned evaluators) with its image count, followed by its difference from the paper's reference row. Other
    runs are in `off_protocol_table`. Columns: source, model, quant, images, then the paper's metric labels."""
    section = paper[benchmark]
    columns, labels = section["columns"], section["labels"]
    rows = [{"source": "paper", "model": name, "quant": "", "images": None,
             **dict(zip(labels, map(_number, values), strict=True))} for name, values in section["rows"].items()]
    ours = _protocol(_ours(results, "evaluate", benchmark), paper_protocol=True)
    for result, quant in zip(ours, _quant_labels(ours), strict=True):
        mine = [_number(result.metrics.get(c)) for c in columns]
        reference = section["reference"]["bf16" if result.quant == "bf16" else "quantized"]
        theirs = [_number(v) for v in section["rows"][reference]]
        # rounded: the published numbers have at most 4 decimals, and CSVs should not show float noise
        delta = [round(a - b, 6) if a is not None and b is not None else None
                 for a, b in zip(mine, theirs, strict=True)]
        rows.append({"source": "ours", "model": result.model, "quant": quant, "images": _images(result),
                     **dict(zip(labels, mine, strict=True))})
        rows.append({"source": f"Δ vs {reference}", "model": result.model, "quant": quant, "images": None,
                     **dict(zip(labels, delta, strict=True))})
    return _counts_as_integers(pd.DataFrame(rows, columns=["source", "model", "quant", "images", *labels]))


def _counts_as_integers(df: pd.DataFrame) -> pd.DataFrame:
    """Image counts stay integers beside missing ones (pandas would make the column float)."""
    df["images"] = pd.Series([None if pd.isna(v) else int(v) for v in df["images"]], index=df.index, dtype=object)
    return df


def off_protocol_table(results: Sequence[Result], benchmark: str, paper: Mapping[str, Any]) -> pd.DataFrame:
    """Our runs of `benchmark` that did not follow the paper's protocol (fewer prompts, another sampler or model,
    approximate evaluators...), never beside the paper's numbers: their scores, image counts and how each run
    differs (`protocol_deviations`; results written before the check say so)."""
    section = paper[benchmark]
    columns, labels = section["columns"], section["labels"]
    off = _protocol(_ours(results, "evaluate", benchmark), paper_protocol=False)
    rows = [{"model": r.model, "quant": quant, "images": _images(r),
             **dict(zip(labels, (_number(r.metrics.get(c)) for c in columns), strict=True)),
             "differs from the paper's protocol": "; ".join(r.extra.get("protocol_deviations") or [
                 "not recorded (evaluated before protocol checks: run evaluate again)"])}
            for r, quant in zip(off, _quant_labels(off), strict=True)]
    return _counts_as_integers(pd.DataFrame(rows, columns=["model", "quant", "images", *labels,
                                                           "differs from the paper's protocol"]))


def _gpu_label(result: Result) -> str:
    gpu = result.gpu or "unknown GPU"
    return f"{gpu} (CPU smoke)" if result.extra.get("smoke") else gpu


def latency_rows(results: Sequence[Result]) -> pd.DataFrame:
    """Every latency measurement, one row per (GPU, variant, mode, resolution); where several runs measured a cell,
    the latest (`measured_at`; runs without it count as oldest, in file order) wins."""
    cells: dict[tuple, dict] = {}
    for result in sorted(_ours(results, "latency"), key=lambda r: str(r.extra.get("measured_at") or "")):
        for row in result.metrics.get("rows", []):
            mode = ("compiled" if row.get("compiled") else "eager") + (" + CUDA graph" if row.get("cuda_graph") else "")
            key = (_gpu_label(result), row["variant"], mode, int(row["resolution"]))
            total = _number(row.get("total_ms"))
            cells[key] = {"gpu": key[0], "variant": key[1], "mode": mode, "resolution": key[3],
                          "total_s": None if total is None else total / 1e3,
                          "per_step_ms": _number(row.get("per_step_ms")), "peak_gib": _number(row.get("peak_gib")),
                          "error": row.get("error")}
    return pd.DataFrame(list(cells.values()),
                        columns=["gpu", "variant", "mode", "resolution", "total_s", "per_step_ms", "peak_gib", "error"])


def latency_table(results: Sequence[Result]) -> pd.DataFrame:
    """Table 3: seconds for one image (all steps of the protocol) per setting (rows) and GPU (columns), merged
    across machines by GPU name; "OOM" where the GPU ran out of memory."""
    long = latency_rows(results)
    if long.empty:
        return pd.DataFrame(columns=["variant", "mode", "resolution"])
    long["cell"] = [e if isinstance(e, str) and e else t for e, t in zip(long["error"], long["total_s"], strict=True)]
    wide = long.pivot(index=["variant", "mode", "resolution"], columns="gpu", values="cell")
    wide.columns.name = None
    return wide.reset_index()


def efficiency_table(results: Sequence[Result], paper: Mapping[str, Any]) -> pd.DataFrame:
    """Fig. 2's numbers: transformer storage (BF16 vs 2-bit and 1.6-bit packing) per model; peak inference memory per
    GPU, of the transformer alone at the largest resolution measured (eager preferred, the paper's measure) and,
    beside it, of the whole pipeline (T5, CLIP, transformer, VAE) in each memory mode measured; the paper's ratio
    beside ours where it published one."""
    eff = paper["efficiency"]
    rows = []
    for r in _ours(results, "storage"):
        bf16, packed = r.metrics["bf16_bytes"], r.metrics["packed_bytes"]
        for fmt in ("2bit", "trit5"):
            rows.append({"measure": "storage", "where": r.model, "ternary": fmt, "bf16_gb": bf16 / 1e9,
                         "ternary_gb": packed[fmt] / 1e9, "ratio": bf16 / packed[fmt],
                         "paper_ratio": eff["storage_ratio"] if fmt == "2bit" else None})
    long = latency_rows(results)
    for gpu, group in long.groupby("gpu", sort=True):
        group = group[group["peak_gib"].notna()]
        if group.empty:
            continue
        resolution = group["resolution"].max()
        at = group[group["resolution"] == resolution]
        mode = "eager" if (at["mode"] == "eager").any() else "compiled"
        peaks = at[at["mode"] == mode].set_index("variant")["peak_gib"]
        for variant in ("w2a16", "w158a8_int8", "w158a8_fp8"):
            if "bf16" in peaks and variant in peaks:
                rows.append({"measure": f"transformer memory ({mode}, {resolution}px)", "where": gpu,
                             "ternary": variant, "bf16_gb": peaks["bf16"] * 2**30 / 1e9,
                             "ternary_gb": peaks[variant] * 2**30 / 1e9,
                             "ratio": peaks["bf16"] / peaks[variant],
                             "paper_ratio": eff["memory_ratio"] if variant == "w2a16" else None})
    rows += _pipeline_memory_rows(results)
    return pd.DataFrame(rows, columns=["measure", "where", "ternary", "bf16_gb", "ternary_gb", "ratio",
                                       "paper_ratio"])


def _pipeline_memory_rows(results: Sequence[Result]) -> list[dict]:
    """Whole-pipeline peaks (`metrics.pipeline` of the latency stage), BF16 against each ternary variant in the same
    memory mode, eager and without CUDA graphs; the latest run per GPU and mode wins."""
    peaks: dict[tuple, dict[str, float]] = {}
    for result in sorted(_ours(results, "latency"), key=lambda r: str(r.extra.get("measured_at") or "")):
        for row in result.metrics.get("pipeline", []):
            peak = _number(row.get("pipeline_peak_gib"))
            if peak is None or row.get("compiled") or row.get("cuda_graph"):
                continue
            key = (_gpu_label(result), row.get("memory_mode", "resident"), int(row["resolution"]))
            peaks.setdefault(key, {})[row["variant"]] = peak
    rows = []
    for (gpu, memory, resolution), by_variant in sorted(peaks.items()):
        for variant in ("w2a16", "w158a8_int8", "w158a8_fp8"):
            if "bf16" in by_variant and variant in by_variant:
                bf16, ternary = by_variant["bf16"], by_variant[variant]
                rows.append({"measure": f"pipeline memory ({memory}, eager, {resolution}px)", "where": gpu,
                             "ternary": variant, "bf16_gb": bf16 * 2**30 / 1e9, "ternary_gb": ternary * 2**30 / 1e9,
                             "ratio": bf16 / ternary, "paper_ratio": None})
    return rows


def _quantize_result(results: Sequence[Result], evaluated: Result) -> Result | None:
    """The quantize stage's record of the checkpoint behind `evaluated`: by the quantize directory the evaluation
    recorded, else the only quantize record of its (model, quant)."""
    quantized = [r for r in results if r.kind == "quantize" and (r.model, r.quant) == (evaluated.model,
                                                                                       evaluated.quant)]
    if directory := evaluated.extra.get("quantize_dir"):
        return next((q for q in quantized if q.source and Path(q.source).parent == Path(directory)), None)
    return quantized[0] if len(quantized) == 1 else None


def _interval(block: Mapping[str, Any] | None, key: str) -> tuple[float | None, float | None]:
    value = (block or {}).get(key)
    return (_number(value[0]), _number(value[1])) if isinstance(value, Sequence) and len(value) == 2 else (None, None)


def _retention(result: Result, tag: str) -> dict[str, float | None]:
    kept = ((result.extra.get("retention_vs_bf16") or {}).get(tag) or {}).get("retention") or {}
    return {"retention": _number(kept.get("estimate")), "retention_low": _number(kept.get("low")),
            "retention_high": _number(kept.get("high"))}


def methods_table(results: Sequence[Result]) -> pd.DataFrame:
    """One row per evaluated (model, quant settings, benchmark): the method, the benchmark's headline score with
    its 95 % interval, the score as a fraction of BF16's (paired interval), fidelity to the BF16 images on the same
    seeds, and from the quantize stage the storage ratio, weight and output error and quantization time."""
    rows = []
    evaluated = _ours(results, "evaluate")
    for r, quant in zip(evaluated, _quant_labels(evaluated), strict=True):
        q = _quantize_result(results, r) if r.quant != "bf16" else None
        fidelity = r.extra.get("fidelity_to_bf16") or {}
        headline = next((k for k in HEADLINE if k in r.metrics), None)
        low, high = _interval(r.extra.get("intervals"), headline) if headline else (None, None)
        rows.append({"model": r.model, "quant": quant, "method": q.extra.get("method") if q else (
                         "bf16" if r.quant == "bf16" else None),
                     "benchmark": r.benchmark, "score": _number(r.metrics.get(headline)) if headline else None,
                     "score_low": low, "score_high": high,
                     **(_retention(r, headline) if headline else {}),
                     **{k: _number(fidelity.get(k)) for k in FIDELITY},
                     "storage_ratio": _number(q.metrics.get("ratio_2bit")) if q else None,
                     "weight_sqnr_db": _number(q.metrics.get("weight_sqnr_db_mean")) if q else None,
                     "output_rel_mse": _number(q.metrics.get("output_rel_mse")) if q else None,
                     "quantize_s": _number(q.metrics.get("seconds")) if q else None})
    columns = ["model", "quant", "method", "benchmark", "score", "score_low", "score_high", "retention",
               "retention_low", "retention_high", *FIDELITY, "storage_ratio", "weight_sqnr_db", "output_rel_mse",
               "quantize_s"]
    return pd.DataFrame(rows, columns=columns).sort_values(["model", "benchmark"], kind="stable",
                                                           ignore_index=True)


def tags_table(results: Sequence[Result]) -> pd.DataFrame:
    """Long form, one row per evaluated result and tag (category) with an interval: the score with its 95 %
    interval and, for quantized models, the fraction of BF16's score kept (paired interval)."""
    rows = []
    evaluated = [r for r in _ours(results, "evaluate") if r.extra.get("intervals")]
    for r, quant in zip(evaluated, _quant_labels(evaluated), strict=True):
        for tag in r.metrics:
            low, high = _interval(r.extra["intervals"], tag)
            if low is None:
                continue
            rows.append({"model": r.model, "quant": quant, "benchmark": r.benchmark, "tag": tag,
                         "score": _number(r.metrics[tag]), "score_low": low, "score_high": high,
                         **_retention(r, tag)})
    return pd.DataFrame(rows, columns=["model", "quant", "benchmark", "tag", "score", "score_low", "score_high",
                                       "retention", "retention_low", "retention_high"])


def _cell(value: Any, digits: int, signed: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{value:+d}" if signed else str(value)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def formatted(df: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Every cell as text: numbers to `digits` decimals (signed in difference rows), missing values as '—'."""
    signed = df["source"].astype(str).str.startswith("Δ") if "source" in df else pd.Series(False, index=df.index)
    return pd.DataFrame({c: [_cell(v, digits, s) for v, s in zip(df[c], signed, strict=True)] for c in df.columns},
                        columns=df.columns)


_LATEX_SYMBOLS = {"Δ": r"$\Delta$", "α": r"$\alpha$", "—": "--"}


def to_latex(df: pd.DataFrame, caption: str, digits: int = 4) -> str:
    text = formatted(df, digits).style.format(escape="latex").hide(axis="index").to_latex(
        caption=caption, hrules=True, position="t")
    for symbol, latex in _LATEX_SYMBOLS.items():
        text = text.replace(symbol, latex)
    return text


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    return formatted(df, digits).to_markdown(index=False, disable_numparse=True) + "\n"


def write_table(df: pd.DataFrame, out_dir: Path, stem: str, caption: str, digits: int = 4,
                note: str | None = None) -> dict[str, Path]:
    """`<stem>.md` (caption, table, note), `<stem>.tex` and `<stem>.csv` (raw numbers) under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("md", "tex", "csv")}
    body = to_markdown(df, digits) if not df.empty else "(no results yet)\n"
    paths["md"].write_text(f"### {caption}\n\n{body}" + (f"\n{note}\n" if note else ""))
    paths["tex"].write_text(to_latex(df, caption, digits))
    df.to_csv(paths["csv"], index=False)
    return paths
