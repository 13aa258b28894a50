"""Which backend `ternary_linear(backend="auto")` runs on a GPU, chosen from measured timings.

Neither implementation wins everywhere: on an H200 the layer-wise unpack baseline (`backend="unpack"`: one layer
unpacked to a dense temporary, then cuBLAS / `_int_mm` / `_scaled_mm`) beat the fused W2A16 kernel at every FLUX
shape, while the fused W1.58A8 kernels won at small M (`docs/performance.md`). `python -m flux158.kernels.bench --table`
times both and keeps, per activation format, layer shape (K, N) and measured M, the faster one: a `BackendTable`.

Small-M calls are launch-bound when launched one by one, so a table timed that way (`kernels.bench`) can rank the
backends differently from one timed as CUDA-graph replays (`kernels.bench --cuda-graph`): `auto` reads the latter
inside `torch.compile`d code and CUDA-graph captures when one exists. It looks in the JSON files named by
`FLUX158_KERNEL_TABLE` if set, else in `kernels/tables/`: one for this GPU's name first, else one
for the same compute capability (H100 and H200 share sm_90, SM count and clocks). Without a table, or for a shape it
did not measure, `auto` runs the fused kernels.
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
EVENT_TIMING = "events, L2 flushed"  # `kernels.bench`: each call launched from Python (eager execution)
GRAPH_TIMING = "cuda graph"  # `kernels.bench --cuda-graph`: calls replayed without host cost (graphs, compiled code)


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


def choose_from_plan(plan: tuple[tuple[int | None, str], ...], m: int, default: str = "triton") -> str:
    """The backend of the first step of `plan` whose bound admits `m`."""
    for bound, backend in plan:
        if bound is None or m <= bound:
            return backend
    return default


@dataclass(frozen=True)
class BackendTable:
    """Measured backend choices for one GPU; `plan` is empty for shapes it has no timings for."""

    gpu: str
    capability: tuple[int, int]
    source: str
    choices: dict[tuple[str, int, int], ShapeChoice]
    timing: str = EVENT_TIMING  # how the cells were timed: launched one by one, or replayed from a CUDA graph

    @property
    def graphed(self) -> bool:
        return self.timing == GRAPH_TIMING

    def plan(self, act: str, k: int, n: int) -> tuple[tuple[int | None, str], ...]:
        """`ShapeChoice.plan` for this shape; () where it was not measured."""
        choice = self.choices.get((act, k, n))
        return choice.plan() if choice else ()

    def to_json(self) -> str:
        entries = [{"act": act, "k": k, "n": n, "m": list(c.ms), "backend": list(c.backends),
                    "us": {b: list(t) for b, t in c.us.items()}}
                   for (act, k, n), c in sorted(self.choices.items())]
        return json.dumps({"format": FORMAT, "gpu": self.gpu, "capability": list(self.capability),
                           "timing": self.timing, "source": self.source, "choices": entries}, indent=1) + "\n"

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
            if data["timing"] not in (EVENT_TIMING, GRAPH_TIMING):
                raise ValueError(f"timing {data['timing']!r}")
            return cls(data["gpu"], tuple(data["capability"]), data.get("source", ""), choices, data["timing"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{origin} is not a kernel backend table ({err}); rebuild it with "
                             f"`python -m flux158.kernels.bench --table PATH`") from err

    @classmethod
    def load(cls, path: Path) -> BackendTable:
        return cls.from_json(Path(path).read_text(), str(path))


def table_slug(gpu_name: str) -> str:
    """File stem of the shipped table for a GPU name: "NVIDIA H200" -> "nvidia_h200"."""
    return "_".join("".join(c if c.isalnum() else " " for c in gpu_name.lower()).split())


def find_table(gpu_name: str, capability: tuple[int, int], graphed: bool = False, tables_dir: Path = TABLES_DIR
               ) -> tuple[BackendTable | None, str]:
    """The table for a GPU and why it was picked. Candidates are the files in `FLUX158_KERNEL_TABLE` (paths
    separated by `os.pathsep`) if set, else the tables shipped in `tables_dir`. Preferred: timed the way the calls
    will run (`graphed`: inside a CUDA graph or compiled code), then on this GPU, then on one of the same compute
    capability."""
    override = os.environ.get(TABLE_ENV)
    paths = [Path(p) for p in override.split(os.pathsep) if p] if override else sorted(tables_dir.glob("*.json"))
    tables = [BackendTable.load(p) for p in paths]
    origin = f"{TABLE_ENV}={override}" if override else "shipped"
    for same_timing in (True, False):
        for same_gpu in (True, False):
            for table in tables:
                if same_timing and table.graphed != graphed:
                    continue
                if same_gpu and table_slug(table.gpu) != table_slug(gpu_name):
                    continue
                if not same_gpu and table.capability != tuple(capability):
                    continue
                gpu = "this GPU" if same_gpu else f"a {table.gpu}, the same sm_{capability[0]}{capability[1]}"
                kind = "" if same_timing else f" (no table timed as {'graphed' if graphed else 'eager'} calls)"
                return table, f"{origin}: measured on {gpu}, {table.timing}{kind}"
    return None, "none measured for this GPU"


@lru_cache(maxsize=None)
def table_for_device(device_index: int, graphed: bool = False) -> BackendTable | None:
    """The table `auto` uses on CUDA device `device_index`, for eager or `graphed` calls (looked up once, logged)."""
    name = torch.cuda.get_device_name(device_index)
    table, why = find_table(name, torch.cuda.get_device_capability(device_index), graphed)
    if table is None:
        log.info("kernels: no measured backend table for %s; auto runs the fused kernels "
                 "(time both with `python -m flux158.kernels.bench --table PATH` and set %s=PATH)", name, TABLE_ENV)
    else:
        log.info("kernels: auto picks fused or unpack per shape for %s calls from the table %s",
                 "graphed" if graphed else "eager", why)
    return table
