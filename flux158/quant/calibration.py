"""Teacher trajectories for calibration: the full-precision pipeline's own transformer calls, stored on disk.

Calibration runs the BF16 (teacher) pipeline over the calibration prompts with the *real* sampler (FLUX's
resolution-shifted schedule), and keeps `states_per_prompt` of its denoising steps per prompt: the transformer's
inputs at that step and its output (the teacher velocity). Every row of every kept call becomes one record, so a
classifier-free-guidance call contributes its unconditional rows too. Methods that need data (`gptq`, `distill`)
and the output-error metric read these records back.

Files: `<dir>/<split>-<chunk:05d>.safetensors`, one per chunk of `chunk_size` prompts, written atomically. A chunk
is the unit of resume and of sharding (round-robin, like generation), and its content depends only on the
prompts, the seeds and the sampler, never on which process made it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from flux158.artifacts import atomic_write
from flux158.errors import Flux158Error
from flux158.generation.embeddings import PromptEmbeddings
from flux158.generation.images import SamplerSettings
from flux158.sharding import seed_for

log = logging.getLogger(__name__)

Record = dict[str, torch.Tensor]
TARGET = "target"
SPLITS = ("train", "heldout")
# Transformer keyword arguments that are per batch row; the id tensors are shared by all rows of a call.
ROW_KEYS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "guidance")
SHARED_KEYS = ("img_ids", "txt_ids")


class CalibrationError(Flux158Error):
    """Calibration data is missing, incomplete or unreadable."""


@dataclass(frozen=True)
class CaptureSettings:
    """How many teacher states to keep and how to cut the work.

    Attributes:
        states_per_prompt: denoising steps kept per prompt, drawn uniformly without replacement from the schedule.
        chunk_size: prompts per file (the unit of resume and sharding).
        batch_size: prompts per pipeline call.
        base_seed: seeds of the initial noise and of the step choice derive from it.
    """

    states_per_prompt: int = 4
    chunk_size: int = 16
    batch_size: int = 4
    base_seed: int = 0

    def __post_init__(self) -> None:
        if min(self.states_per_prompt, self.chunk_size, self.batch_size) < 1:
            raise ValueError("states_per_prompt, chunk_size and batch_size must be >= 1")


class TransformerCallRecorder:
    """Forward hook on a transformer that keeps the calls of chosen denoising steps, split into per-row records.

    Steps are counted by changes of the `timestep` argument, so a pipeline that calls the transformer twice per
    step (true CFG) is counted right.
    """

    def __init__(self, transformer: torch.nn.Module, keep_steps: set[int]) -> None:
        self.keep_steps, self.records, self._step, self._last_t = keep_steps, [], -1, None
        self._handle = transformer.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output) -> None:
        t = kwargs["timestep"]
        key = tuple(t.flatten().tolist())
        if key != self._last_t:
            self._step, self._last_t = self._step + 1, key
        if self._step not in self.keep_steps:
            return
        out = output[0] if isinstance(output, tuple) else output.sample
        for row in range(out.shape[0]):
            record = {k: kwargs[k][row:row + 1].detach().cpu().clone() for k in ROW_KEYS if kwargs.get(k) is not None}
            record.update({k: kwargs[k].detach().cpu().clone() for k in SHARED_KEYS})
            record[TARGET] = out[row:row + 1].detach().cpu().clone()
            record["step"], record["row"] = torch.tensor([self._step]), torch.tensor([row])
            self.records.append(record)

    def reset(self) -> None:
        """Start counting steps again (call before each pipeline call)."""
        self._step, self._last_t = -1, None

    def remove(self) -> None:
        self._handle.remove()


def chosen_steps(num_steps: int, k: int, seed: int) -> set[int]:
    """`k` distinct step indices, uniform over the schedule, from `seed`."""
    rng = np.random.default_rng(seed)
    return set(rng.choice(num_steps, size=min(k, num_steps), replace=False).tolist())


def capture_prompts(pipe: Callable[..., object], prompts: Sequence[str], seeds: Sequence[int],
                    sampler: SamplerSettings, keep_steps: Sequence[set[int]], batch_size: int,
                    embeddings: PromptEmbeddings | None = None) -> list[Record]:
    """Run the teacher on `prompts` (one image each, CPU generators from `seeds`) and keep, for prompt `i`, the
    calls of the steps in `keep_steps[i]`; each record gets `prompt_index` (position in `prompts`). With
    `embeddings`, the teacher conditions on the stored prompt embeddings (its text encoders may be absent)."""
    recorder = TransformerCallRecorder(pipe.transformer, set().union(*keep_steps))
    kept: list[Record] = []
    try:
        for start in range(0, len(prompts), batch_size):
            recorder.reset()
            batch, batch_seeds = list(prompts[start:start + batch_size]), seeds[start:start + batch_size]
            pipe(**_conditioning(pipe, batch, embeddings),
                 generator=[torch.Generator("cpu").manual_seed(s) for s in batch_seeds],
                 num_inference_steps=sampler.num_inference_steps, guidance_scale=sampler.guidance_scale,
                 height=sampler.height, width=sampler.width, max_sequence_length=sampler.max_sequence_length,
                 output_type="pt")
            for record in recorder.records:  # rows are (CFG halves of) the batch, in prompt order
                row = int(record.pop("row"))
                i = start + row % len(batch)
                if int(record["step"]) in keep_steps[i]:  # branch: 0 = unconditional half of a CFG call (or no CFG)
                    kept.append({**record, "prompt_index": torch.tensor([i]),
                                 "branch": torch.tensor([row // len(batch)])})
            recorder.records.clear()
    finally:
        recorder.remove()
    return kept


def _conditioning(pipe, prompts: list[str], embeddings: PromptEmbeddings | None) -> dict:
    if embeddings is None:
        return {"prompt": prompts}
    stored = [embeddings.load(p, getattr(pipe, "_execution_device", "cpu")) for p in prompts]
    return {name: torch.cat([s[name] for s in stored]) for name in ("prompt_embeds", "pooled_prompt_embeds")}


def chunk_path(directory: Path, split: str, chunk: int) -> Path:
    return Path(directory) / f"{split}-{chunk:05d}.safetensors"


def num_chunks(num_prompts: int, chunk_size: int) -> int:
    return -(-num_prompts // chunk_size)


def save_records(records: Sequence[Record], path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {f"{i:06d}.{k}": v.contiguous() for i, r in enumerate(records) for k, v in r.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {}))


def load_records(path: Path) -> list[Record]:
    try:
        flat = load_file(path)
    except (OSError, SafetensorError) as e:
        raise CalibrationError(f"cannot read calibration file {path} (truncated or corrupt?): {e}") from None
    records: dict[int, Record] = {}
    for key, value in flat.items():
        index, _, name = key.partition(".")
        records.setdefault(int(index), {})[name] = value
    return [records[i] for i in sorted(records)]


def record_bytes(records: Sequence[Record]) -> int:
    return sum(v.numel() * v.element_size() for r in records for v in r.values())


def estimate_bytes(pipe: Callable[..., object], prompt: str, sampler: SamplerSettings, num_prompts: int,
                   states_per_prompt: int, embeddings: PromptEmbeddings | None = None) -> int:
    """Disk needed for `num_prompts` prompts, measured from one single-step teacher call."""
    one_step = SamplerSettings(1, sampler.guidance_scale, sampler.height, sampler.width, sampler.max_sequence_length)
    records = capture_prompts(pipe, [prompt], [0], one_step, [{0}], 1, embeddings)
    return record_bytes(records) * states_per_prompt * num_prompts


def write_calibration(pipe: Callable[..., object], prompts: Sequence[str], directory: Path, split: str,
                      sampler: SamplerSettings, settings: CaptureSettings, shard_index: int = 0, shard_count: int = 1,
                      progress: bool = True, embeddings: PromptEmbeddings | None = None) -> int:
    """Capture this shard's missing chunks of `split` into `directory`; returns how many prompts were captured.

    The seed of prompt `i` (its position in `prompts`) and the steps kept for it depend only on
    (`base_seed`, split, i), so results do not depend on sharding, batching across chunks or resumption.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    salt = SPLITS.index(split)
    chunks = [c for c in range(num_chunks(len(prompts), settings.chunk_size)) if c % shard_count == shard_index]
    todo = [c for c in chunks if not chunk_path(directory, split, c).exists()]
    if len(todo) < len(chunks):
        log.info("calibration %s: %d of this shard's %d chunks already on disk", split, len(chunks) - len(todo),
                 len(chunks))
    captured = 0
    for c in tqdm(todo, desc=f"calibrate {split}", unit="chunk", disable=not progress):
        indices = range(c * settings.chunk_size, min((c + 1) * settings.chunk_size, len(prompts)))
        keep = [chosen_steps(sampler.num_inference_steps, settings.states_per_prompt,
                             seed_for(settings.base_seed, i, 2 * salt + 1)) for i in indices]
        seeds = [seed_for(settings.base_seed, i, 2 * salt) for i in indices]
        records = capture_prompts(pipe, [prompts[i] for i in indices], seeds, sampler, keep, settings.batch_size,
                                  embeddings)
        for r in records:
            r["prompt_index"] += indices.start
        save_records(records, chunk_path(directory, split, c), {"split": split, "chunk": str(c)})
        captured += len(indices)
    return captured


class CalibrationSet:
    """The records of one split, in a fixed order, with batching helpers for the quantization methods."""

    def __init__(self, records: list[Record]) -> None:
        if not records:
            raise CalibrationError("empty calibration set")
        self.records = records

    @classmethod
    def load(cls, directory: Path, split: str = "train", limit: int | None = None) -> CalibrationSet:
        files = sorted(Path(directory).glob(f"{split}-*.safetensors"))
        if not files:
            raise CalibrationError(f"no {split!r} calibration files in {directory}: run the calibrate stage first")
        records = [r for f in files for r in load_records(f)]
        return cls(records[:limit] if limit else records)

    def __len__(self) -> int:
        return len(self.records)

    def batch(self, indices: Sequence[int], device: torch.device | str = "cpu",
              dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(transformer kwargs, teacher output) for the rows `indices`; floating tensors cast to `dtype`."""
        rows = [self.records[i] for i in indices]

        def cast(t: torch.Tensor) -> torch.Tensor:
            t = t.to(device)
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t

        kwargs = {k: cast(torch.cat([r[k] for r in rows])) for k in ROW_KEYS if k in rows[0]}
        kwargs.update({k: cast(rows[0][k]) for k in SHARED_KEYS})
        return kwargs, cast(torch.cat([r[TARGET] for r in rows]))

    def batches(self, batch_size: int, device: torch.device | str = "cpu",
                dtype: torch.dtype | None = None) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self))), device, dtype)

    def guidance_pairs(self) -> list[tuple[int, int]]:
        """(unconditional, conditional) record indices of the same classifier-free-guided call (empty for models
        without CFG, such as guidance-distilled FLUX.1-dev)."""
        halves: dict[tuple[int, int], dict[int, int]] = {}
        for j, r in enumerate(self.records):
            if "branch" in r:
                halves.setdefault((int(r["prompt_index"]), int(r["step"])), {})[int(r["branch"])] = j
        return [(h[0], h[1]) for h in halves.values() if 0 in h and 1 in h]

    def sigmas(self) -> torch.Tensor:
        return torch.cat([r["timestep"].float() for r in self.records])
