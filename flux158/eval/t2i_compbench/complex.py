"""T2I-CompBench's complex category: the 3-in-1 combination of B-VQA, 2D spatial (complex mode) and CLIPScore
(complex mode: adjectives removed from the prompt), chosen per prompt by its sub-type file."""

from __future__ import annotations

from collections.abc import Sequence


def prompt_key(line: str) -> str:
    """How upstream matches a prompt against the sub-type files: up to the first '.', lowercased."""
    return line.strip("\n").split(".")[0].lower()


def without_adjectives(tokens: Sequence[tuple[str, str]]) -> str:
    """CLIPScore's complex-mode text: spaCy tokens not tagged ADJ, joined with single spaces."""
    return " ".join(text for text, pos in tokens if pos != "ADJ")


def three_in_one(prompts: Sequence[str], attribute: Sequence[float], spatial: Sequence[float],
                 clip: Sequence[float], spatial_prompts: Sequence[str], action_prompts: Sequence[str],
                 samples_per_prompt: int = 10) -> list[float]:
    """Per-image 3-in-1 scores, aligned by position with `prompts` repeated `samples_per_prompt` times:
    (spatial + attribute) / 2 for `complex_val_spatial` prompts, (clip + attribute) / 2 for `complex_val_action`
    ones, and the mean of all three otherwise."""
    n = len(prompts) * samples_per_prompt
    if not len(attribute) == len(spatial) == len(clip) == n:
        raise ValueError(f"3-in-1 needs {n} scores from each metric ({len(prompts)} prompts x {samples_per_prompt}), "
                         f"got {len(attribute)}, {len(spatial)}, {len(clip)}")
    spatial_keys, action_keys = {prompt_key(p) for p in spatial_prompts}, {prompt_key(p) for p in action_prompts}
    scores = []
    for i in range(n):
        key = prompt_key(prompts[i // samples_per_prompt])
        if key in spatial_keys:
            scores.append((spatial[i] + attribute[i]) / 2)
        elif key in action_keys:
            scores.append((clip[i] + attribute[i]) / 2)
        else:
            scores.append((attribute[i] + spatial[i] + clip[i]) / 3)
    return scores
