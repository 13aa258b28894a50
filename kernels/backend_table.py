"""Which backend `ternary_linear(backend="auto")` runs on a GPU, chosen from measured timings.

Neither implementation wins everywhere: on an H200 the layer-wise unpack baseline (`backend="unpack"`: one layer
unpacked to a dense temporary, then cuBLAS / `_int_mm` / `_scaled_mm`) beat the fused W2A16 kernel at every FLUX
shape, while the fused W1.58A8 kernels won at small M (`docs/performance.md`). `python -m kernels.bench --table`
times both and keeps, per activation format, layer shape (K, N) and measured M, the faster one: a `BackendTable`.

`auto` reads the table for the GPU at hand: the JSON file named by `FLUX158_KERNEL_TABLE` if set, else one shipped in
`kernels/tables/` for this GPU's name, else one shipped for the same compute capability (H100 and H200 share sm_90,
SM count and clocks). Without a table, or for a shape it did not measure, `auto` runs the fused kernels.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from itertools import pairwise
from pathlib import Path

import torch

log = logging.getLogger(__name__)

FORMAT = "flux158.backend_table/1"
TABLE_ENV = "FLUX158_KERNEL_TABLE"
TABLES_DIR = Path(__file__).parent / "tables"
ACT_KEYS = ("bf16", "int8", "fp8")  # the activation operand: 16-bit (W2A16), int8 or fp8 (W1.58A8)
BACKENDS = ("triton", "unpack")


@dataclass(frozen=True)
class ShapeChoice:
    """The faster backend at each measured M for one activation format and layer shape, with the timings (µs)."""

    ms: tuple[int, ...]
    backends: tuple[str, ...]
    us: dict[str, tuple[float | None, ...]] = field(default_factory=dict, compare=False)

    def plan(self) -> tuple[tuple[int | None, str], ...]:
        """((largest M, backend), ..., (None, backend)): each M goes to the measured M nearest on a log scale
        (ties to the larger), runs of the same backend merged. Plain comparisons, so `torch.compile` can guard on
        them with symbolic M. Computed once (eager dispatch asks on every call)."""
        return self._plan

    @cached_property
    def _plan(self) -> tuple[tuple[int | None, str], ...]:
        steps: list[tuple[int | None, str]] = []
        for (a, b), backend in zip(pairwise(self.ms), self.backends[:-1], strict=True):
            root = math.isqrt(a * b)
            steps.append((root - 1 if root * root == a * b else root, backend))
        steps.append((None, self.backends[-1]))
        merged = [step for i, step in enumerate(steps) if i + 1 == len(steps) or steps[i + 1][1] != step[1]]
        return tuple(merged)

    def at(self, m: int) -> str:
        return choose_from_plan(self.plan(), m)


def choose_from_plan(plan: tuple[tuple[int | None, str], ...], m: int, default: str = "triton") -> str:
    """The backend of the first step of `plan` whose bound admits `m`."""
    for bound, backend in plan:
        if bound is None or m <= bound:
            return backend
    return default


@dataclass(frozen=True)
class BackendTable:
    """Measured backend choices for one GPU; `choose` returns None for shapes it has no timings for."""

    gpu: str
    capability: tuple[int, int]
    source: str
    choices: dict[tuple[str, int, int], ShapeChoice]

    def plan(self, act: str, k: int, n: int) -> tuple[tuple[int | None, str], ...]:
        """`ShapeChoice.plan` for this shape; () where it was not measured."""
        choice = self.choices.get((act, k, n))
        return choice.plan() if choice else ()

    def choose(self, act: str, m: int, k: int, n: int) -> str | None:
        choice = self.choices.get((act, k, n))
        return choice.at(m) if choice else None

    def to_json(self) -> str:
        entries = [{"act": act, "k": k, "n": n, "m": list(c.ms), "backend": list(c.backends),
                    "us": {b: list(t) for b, t in c.us.items()}}
                   for (act, k, n), c in sorted(self.choices.items())]
        return json.dumps({"format": FORMAT, "gpu": self.gpu, "capability": list(self.capability),
                           "source": self.source, "choices": entries}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str = "<string>") -> BackendTable:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            choices = {}
            for e in data["choices"]:
                if e["act"] not in ACT_KEYS or not set(e["backend"]) <= set(BACKENDS) or len(e["m"]) != len(
                        e["backend"]) or not e["m"] or list(e["m"]) != sorted(set(e["m"])):
                    raise ValueError(f"bad entry {e}")
                choices[(e["act"], int(e["k"]), int(e["n"]))] = ShapeChoice(
                    tuple(int(m) for m in e["m"]), tuple(e["backend"]),
                    {b: tuple(t) for b, t in e.get("us", {}).items()})
            return cls(data["gpu"], tuple(data["capability"]), data.get("source", ""), choices)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{origin} is not a kernel backend table ({err}); rebuild it with "
                             f"`python -m kernels.bench --table PATH`") from err

    @classmethod
    def load(cls, path: Path) -> BackendTable:
        return cls.from_json(Path(path).read_text(), str(path))


def table_slug(gpu_name: str) -> str:
    """File stem of the shipped table for a GPU name: "NVIDIA H200" -> "nvidia_h200"."""
    return "_".join("".join(c if c.isalnum() else " " for c in gpu_name.lower()).split())


def find_table(gpu_name: str, capability: tuple[int, int], tables_dir: Path = TABLES_DIR
               ) -> tuple[BackendTable | None, str]:
    """The table for a GPU and why it was picked: `FLUX158_KERNEL_TABLE`, a shipped table for this GPU's name, or
    one for its compute capability."""
    override = os.environ.get(TABLE_ENV)
    if override:
        return BackendTable.load(Path(override)), f"{TABLE_ENV}={override}"
    shipped = sorted(tables_dir.glob("*.json"))
    exact = tables_dir / f"{table_slug(gpu_name)}.json"
    if exact.is_file():
        return BackendTable.load(exact), f"measured on this GPU ({exact.name})"
    for path in shipped:
        table = BackendTable.load(path)
        if table.capability == tuple(capability):
            return table, f"measured on a {table.gpu}, the same compute capability sm_{capability[0]}{capability[1]}"
    return None, "none measured for this GPU"


@lru_cache(maxsize=None)
def table_for_device(device_index: int) -> BackendTable | None:
    """The table `auto` uses on CUDA device `device_index` (looked up once per device and logged)."""
    name = torch.cuda.get_device_name(device_index)
    table, why = find_table(name, torch.cuda.get_device_capability(device_index))
    if table is None:
        log.info("kernels: no measured backend table for %s; auto runs the fused kernels "
                 "(time both with `python -m kernels.bench --table PATH` and set %s=PATH)", name, TABLE_ENV)
    else:
        log.info("kernels: auto picks fused or unpack per shape from the table %s", why)
    return table
