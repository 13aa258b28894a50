"""List the T2I-CompBench numeracy prompts whose (object, count) pairs differ between upstream's two parsers.

    python scripts/numeracy_parsers.py [--split val] [--mirror ../shared/benchmarks]

Reads the pinned prompt file and `new_objects.txt`, tokenizes with spaCy's en_core_web_sm when it is installed
(upstream's tokenizer) and otherwise with a regex that splits words from punctuation as spaCy does for these prompts,
and prints each prompt where `parse_counts(..., parser="2024-11")` and `parser="2025-01"` disagree.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from flux158.data import sources
from flux158.data.pinned import fetch
from flux158.eval.t2i_compbench.rules import parse_counts
from flux158.eval.t2i_compbench.vocabulary import read_numeracy_objects


def tokenizer():
    """(name, tokenize): spaCy's small English model if installed, else words and punctuation by regex."""
    try:
        import spacy

        nlp = spacy.load("en_core_web_sm")
        return "spaCy en_core_web_sm", lambda text: [t.text for t in nlp(text)]
    except (ImportError, OSError):
        return "regex (words, punctuation)", lambda text: re.findall(r"\w+|[^\w\s]", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="val", choices=["val", "train"])
    ap.add_argument("--mirror", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks")
    ap.add_argument("--cache", type=Path, default=Path("outputs/data"))
    args = ap.parse_args()
    where = (args.cache, [args.mirror])
    prompts = [line.strip() for line in fetch(sources.t2i_compbench_file("numeracy", args.split), *where)
               .read_text().splitlines() if line.strip()]
    objects = read_numeracy_objects(fetch(sources.T2I_NUMERACY_OBJECTS, *where))
    name, tokenize = tokenizer()
    differ = []
    for prompt in prompts:
        tokens = tokenize(prompt)
        old, new = (parse_counts(tokens, *objects, parser=p) for p in ("2024-11", "2025-01"))
        if old != new:
            differ.append((prompt, old, new))
    print(f"numeracy_{args.split}: {len(differ)} of {len(prompts)} prompts parse differently (tokenizer: {name})\n")
    print("| prompt | 2024-11 (33d6305) | 2025-01 (01835fe) |\n|---|---|---|")
    for prompt, old, new in differ:
        show = lambda pairs: ", ".join(f"{o} x{c}" for o, c in pairs) or "(none)"  # noqa: E731
        print(f"| {prompt} | {show(old)} | {show(new)} |")


if __name__ == "__main__":
    main()
