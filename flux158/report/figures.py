"""Fig. 2 as a PNG: transformer storage and inference memory, BF16 beside ternary, with our ratios and the
paper's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def efficiency_figure(table: pd.DataFrame, out: Path, title: str = "Storage and inference memory") -> Path:
    """Grouped bars from `tables.efficiency_table`: one panel for storage, one for the transformer's memory, one for
    the whole pipeline's; each bar pair is annotated with our ratio (and the paper's where it published one)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    panels = [("storage", table[table["measure"] == "storage"]),
              ("transformer memory", table[table["measure"].str.startswith("transformer memory")]),
              ("whole-pipeline memory", table[table["measure"].str.startswith("pipeline memory")])]
    panels = [(name, rows) for name, rows in panels if not rows.empty] or [("no results yet", table)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (name, rows) in zip(axes[0], panels, strict=True):
        labels = [f"{w}\n{t}" for w, t in zip(rows["where"], rows["ternary"], strict=True)]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], rows["bf16_gb"], width=0.4, label="BF16", color="#7f7f7f")
        ax.bar([i + 0.2 for i in x], rows["ternary_gb"], width=0.4, label="ternary", color="#1f77b4")
        for i, (top, ratio, paper) in enumerate(zip(rows["bf16_gb"], rows["ratio"], rows["paper_ratio"],
                                                    strict=True)):
            text = f"{ratio:.2f}x" + (f"\n(paper {paper:g}x)" if pd.notna(paper) else "")
            ax.annotate(text, (i, top), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_ylabel("GB")
        ax.set_title(name)
        ax.margins(y=0.25)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
