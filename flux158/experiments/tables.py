"""Stage `tables` (`experiment=paper_tables`): the paper's Tables 1-3, Fig. 2 and a method comparison, rebuilt from
every `metrics.json` under the outputs directory (or from W&B with `tables.source=wandb`), beside the paper's
numbers; plus side-by-side image grids (prompt | BF16 | each quantized variant) from the evaluated image folders.

Only paper-protocol evaluations (`metrics.json`'s `paper_protocol`) stand beside the paper's rows, with their image
counts; the others go to `*_other_runs` tables that say how each differs. A grid shows only images made with the
same model, prompts, sampler and seeds (`pairing_key`).

Writes `<tables.out_dir>/{table1_t2i_compbench,table2_geneval,table1_t2i_compbench_other_runs,
table2_geneval_other_runs,table3_latency,fig2_efficiency,methods,methods_by_tag}.{md,tex,csv}`,
`fig2_efficiency.png`, `grids/*.png` and `index.md` (all tables in one page).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from flux158.errors import Flux158Error
from flux158.eval.fidelity import comparison_grid
from flux158.experiments import tracking
from flux158.report.figures import efficiency_figure
from flux158.report.records import Result, collect, results_from_json, without_random_weights
from flux158.report.tables import (
    benchmark_table,
    efficiency_table,
    formatted,
    latency_rows,
    latency_table,
    load_paper_numbers,
    methods_table,
    off_protocol_table,
    tags_table,
    write_table,
)

log = logging.getLogger(__name__)

OTHER_RUNS = ("Our runs outside the paper's protocol (not comparable with the paper's {table}; each says how it "
              "differs)")


def _results(cfg: DictConfig, out: Path) -> list[Result]:
    t = cfg.tables
    if t.source == "disk":
        return collect(Path(t.root), exclude=[out])
    if t.source == "wandb":
        path = t.wandb_path or "/".join(p for p in (cfg.logger.get("entity"), cfg.logger.get("project")) if p)
        if not path:
            raise Flux158Error("tables.source=wandb needs tables.wandb_path=<entity>/<project> (or logger=wandb)")
        return results_from_json(tracking.results_from_wandb(path))
    raise Flux158Error(f"tables.source must be disk or wandb, got {t.source!r}")


def _grids(results: list[Result], out: Path, prompts_per_grid: int) -> list[Path]:
    """One grid per group of images made with the same model, benchmark, prompts, sampler and seeds (`pairing_key`)
    with a BF16 result and at least one other: the first prompts' first image from the BF16 folder, then the same
    file from each variant's folder. Results without a pairing key (evaluated by an older flux158) are left out."""
    by_group: dict[tuple[str, str, str], list[Result]] = {}
    unpaired = 0
    for r in results:
        if r.kind == "evaluate" and r.extra.get("images_dir") and Path(r.source).is_file():
            if not r.extra.get("pairing_key"):
                unpaired += 1
                continue
            by_group.setdefault((r.model, r.benchmark, r.extra["pairing_key"]), []).append(r)
    if unpaired:
        log.warning("tables: %d evaluation(s) record no pairing key (evaluated before it existed); left out of the "
                    "image grids: run their evaluate stage again to include them", unpaired)
    grids = []
    for (model, benchmark, key), group in sorted(by_group.items()):
        reference = next((r for r in group if r.quant == "bf16"), None)
        variants = [r for r in group if r is not reference]
        rows_file = Path(reference.source).with_name("results.jsonl") if reference else None
        if reference is None or not variants or not rows_file.exists():
            continue
        picked: dict[str, str] = {}
        for line in rows_file.read_text().splitlines():
            row = json.loads(line)
            picked.setdefault(row["prompt"], row["filename"])
            if len(picked) == prompts_per_grid:
                break
        columns = {"bf16": [Path(reference.extra["images_dir"]) / f for f in picked.values()]}
        columns.update({f"{r.quant} ({r.config_hash})" if sum(v.quant == r.quant for v in variants) > 1 else r.quant:
                        [Path(r.extra["images_dir"]) / f for f in picked.values()] for r in variants})
        if not all(p.exists() for paths in columns.values() for p in paths):
            log.warning("tables: %s/%s grid skipped: some variants lack the BF16 images' files", model, benchmark)
            continue
        grids.append(comparison_grid(list(picked), columns, out / "grids" / f"{model}-{benchmark}-{key}.png"))
    return grids


def run(cfg: DictConfig) -> Path:
    out = Path(cfg.tables.out_dir)
    results, refused = without_random_weights(_results(cfg, out))
    if refused:
        log.warning("tables: %d result(s) of random-weight models left out (they measure cost, not quality): %s",
                    len(refused), ", ".join(sorted({f"{r.kind} {r.model}/{r.quant}" for r in refused})))
    kinds = {k: sum(r.kind == k for r in results) for k in ("evaluate", "latency", "storage", "quantize")}
    log.info("tables: %d results (%s)", len(results), ", ".join(f"{n} {k}" for k, n in kinds.items()))
    paper = load_paper_numbers()
    tables = {
        "table1_t2i_compbench": (benchmark_table(results, "t2i_compbench", paper), paper["t2i_compbench"]["caption"],
                                 paper["t2i_compbench"]["digits"], None),
        "table2_geneval": (benchmark_table(results, "geneval", paper), paper["geneval"]["caption"],
                           paper["geneval"]["digits"], None),
        "table1_t2i_compbench_other_runs": (off_protocol_table(results, "t2i_compbench", paper),
                                            OTHER_RUNS.format(table="Table 1"), paper["t2i_compbench"]["digits"],
                                            None),
        "table2_geneval_other_runs": (off_protocol_table(results, "geneval", paper),
                                      OTHER_RUNS.format(table="Table 2"), paper["geneval"]["digits"], None),
        "table3_latency": (latency_table(results), paper["latency"]["caption"] + " (seconds)", 2,
                           f"Paper: {paper['latency']['note']}"),
        "fig2_efficiency": (efficiency_table(results, paper), paper["efficiency"]["caption"], 2,
                            f"Paper: {paper['efficiency']['note']}"),
        "methods": (methods_table(results), "Quantization methods: storage, error, fidelity to BF16 and scores", 4,
                    "Score and retention (score / BF16 score) with 95 % bootstrap intervals over prompts where the "
                    "benchmark gives pass/fail rows."),
        "methods_by_tag": (tags_table(results), "Scores per tag with 95 % intervals, and retention of BF16's", 3,
                           None),
    }
    pages = [f"# Paper tables\n\nFrom {len(results)} metrics.json files; paper numbers: {paper['source']}.\n"]
    for stem, (df, caption, digits, note) in tables.items():
        pages.append(write_table(df, out, stem, caption, digits, note)["md"].read_text())
    latency_rows(results).to_csv(out / "table3_latency_long.csv", index=False)
    figure = efficiency_figure(tables["fig2_efficiency"][0], out / "fig2_efficiency.png",
                               paper["efficiency"]["caption"])
    grids = _grids(results, out, cfg.tables.grid_prompts)
    pages.append("\n![Fig. 2](fig2_efficiency.png)\n" + "".join(f"\n![{g.stem}](grids/{g.name})\n" for g in grids))
    (out / "index.md").write_text("\n".join(pages))
    with tracking.track(cfg, "tables") as tracker:
        for stem, (df, _, digits, _) in tables.items():
            text = formatted(df, digits)
            tracker.table(stem, list(text.columns), text.values.tolist())
        tracker.log_image("fig2_efficiency", figure)
        for grid in grids:
            tracker.log_image(f"grid/{grid.stem}", grid)
        tracker.artifact(out, "paper-tables", "tables")
    log.info("tables: wrote %s (%d tables, Fig. 2, %d grids)", out / "index.md", len(tables), len(grids))
    return out
