"""Prompt embeddings as an artifact: T5 and CLIP run once per (text encoders, prompt, max sequence length), and every
later pipeline call (BF16 and each ternary variant, `generate` and `calibrate`) reads the stored tensors instead.

One safetensors file per prompt, named by the sha256 of the prompt text, holding FLUX's two conditioning tensors for
one image (`prompt_embeds` (1, L, 4096), `pooled_prompt_embeds` (1, 768)) in the encoders' dtype, with the prompt in
the metadata. Files are written through the verified atomic path, so a folder is resumable and shardable: any
process may encode any missing prompt, and a finished file never changes. FLUX's pipeline takes the tensors as
`prompt_embeds=`/`pooled_prompt_embeds=` and repeats them per image exactly as it repeats freshly encoded ones, so
the images are the same bytes either way.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from flux158.artifacts import atomic_write
from flux158.errors import Flux158Error

log = logging.getLogger(__name__)
TENSORS = ("prompt_embeds", "pooled_prompt_embeds")


class EmbeddingsError(Flux158Error):
    """A stored prompt embedding is missing, unreadable or does not belong to its prompt."""


def prompt_file(folder: Path, prompt: str) -> Path:
    return Path(folder) / f"{hashlib.sha256(prompt.encode()).hexdigest()[:32]}.safetensors"


def _check(path: Path) -> None:
    """A written file must read back with both tensors (before it takes its name)."""
    with safe_open(path, "pt") as f:
        missing = set(TENSORS) - set(f.keys())
    if missing:
        raise EmbeddingsError(f"{path} lacks {sorted(missing)}")


@dataclass(frozen=True)
class PromptEmbeddings:
    """The embeddings folder of one text-encoder setup (`max_sequence_length` included)."""

    folder: Path

    def missing(self, prompts: Sequence[str]) -> list[str]:
        """The distinct prompts without a stored file, in first-seen order."""
        return [p for p in dict.fromkeys(prompts) if not prompt_file(self.folder, p).exists()]

    def encode(self, pipe, prompts: Sequence[str], max_sequence_length: int, progress: bool = True) -> int:
        """Encode and store every missing prompt with `pipe.encode_prompt` (FLUX's T5 + CLIP); returns how many
        were encoded."""
        todo = self.missing(prompts)
        for prompt in tqdm(todo, desc="encode prompts", unit="prompt", disable=not progress):
            with torch.no_grad():
                embeds, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None,
                                                       max_sequence_length=max_sequence_length)
            tensors = {"prompt_embeds": embeds.detach().cpu().contiguous(),
                       "pooled_prompt_embeds": pooled.detach().cpu().contiguous()}
            atomic_write(prompt_file(self.folder, prompt),
                         lambda tmp, t=tensors, p=prompt: save_file(t, tmp, metadata={"prompt": p}),
                         check=_check)
        return len(todo)

    def load(self, prompt: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """`{"prompt_embeds": ..., "pooled_prompt_embeds": ...}` of `prompt`, ready for the pipeline's call."""
        path = prompt_file(self.folder, prompt)
        if not path.exists():
            raise EmbeddingsError(f"no stored embeddings for {prompt!r} in {self.folder}: run the encode stage")
        try:
            with safe_open(path, "pt") as f:
                stored = (f.metadata() or {}).get("prompt")
            tensors = load_file(path, device=str(device))
        except (OSError, SafetensorError) as e:
            raise EmbeddingsError(f"cannot read {path} ({e}); delete it and encode again") from None
        if stored != prompt:
            raise EmbeddingsError(f"{path} holds the embeddings of {stored!r}, not of {prompt!r}")
        return {name: tensors[name] for name in TENSORS}
