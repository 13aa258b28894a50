"""The dependency rules of the design card (ARCHITECTURE.md, "Dependency direction"), checked on the source:
imports point down run.py -> experiments -> (library, evaluators) -> kernels; the library knows nothing of Hydra or
W&B; one module talks to W&B; stages never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flux158"
STAGES = {"calibrate", "encode", "quantize", "generate", "evaluate", "storage", "latency", "tables", "toyworld_train"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the flux158 package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path) -> set[str]:
    """Absolute names a module imports (at any depth of the file, lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _layer(module: str) -> str:
    for layer in ("flux158.kernels", "flux158.eval", "flux158.experiments"):
        if module == layer or module.startswith(layer + "."):
            return layer
    return "flux158"  # the library


MODULES = _modules()
IMPORTS = {name: _imports(path) for name, path in MODULES.items()}
ALLOWED = {  # layer -> the project layers it may import
    "flux158.experiments": {"flux158.experiments", "flux158", "flux158.eval", "flux158.kernels"},
    "flux158": {"flux158", "flux158.kernels"},
    "flux158.eval": {"flux158.eval", "flux158.kernels"},
    "flux158.kernels": {"flux158.kernels"},
}


def test_the_scan_sees_the_package():
    assert {"flux158.kernels.dispatch", "flux158.eval.geneval.rules", "flux158.experiments.evaluate",
            "flux158.quant.api"} <= MODULES.keys()
    assert any(name.startswith("flux158.kernels") for name in IMPORTS["flux158.quant.linear"])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    own = _layer(module)
    project = {name for name in IMPORTS[module] if name == "flux158" or name.startswith("flux158.")}
    wrong = sorted(name for name in project if name != "flux158" and _layer(name) not in ALLOWED[own])
    assert not wrong, f"{module} ({own}) imports {wrong}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) != "flux158.experiments"))
def test_library_knows_nothing_of_hydra_or_wandb(module):
    roots = {name.split(".")[0] for name in IMPORTS[module]}
    assert not roots & {"hydra", "omegaconf", "wandb"}, module


def test_one_module_talks_to_wandb():
    users = sorted(m for m, names in IMPORTS.items() if any(n.split(".")[0] == "wandb" for n in names))
    assert users == ["flux158.experiments.tracking"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stages_never_import_each_other(stage):
    module = f"flux158.experiments.{stage}"
    others = {f"flux158.experiments.{s}" for s in STAGES - {stage}}
    assert not IMPORTS[module] & others, f"{module} imports {sorted(IMPORTS[module] & others)}"
