"""The project installs import names of its own only, and importing it never breaks transformers or diffusers.

Recent transformers import Hugging Face's `kernels` distribution; a top-level `kernels` package of ours (as the
project once had) shadowed it from the repository root and broke `from diffusers import FluxPipeline`.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from setuptools import find_packages

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _installed_top_level() -> set[str]:
    """Top-level import names of the packages pyproject.toml installs."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return {name.split(".")[0] for name in find_packages(str(REPO), include=find["include"])}


def _importable_from_repo_root() -> set[str]:
    """What `import <name>` finds in the repository root when it is the working directory (sys.path[0] == '')."""
    modules = {p.stem for p in REPO.glob("*.py")}
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    return modules | packages


def test_pyproject_installs_one_top_level_package():
    assert _installed_top_level() == {"flux158"}


@pytest.mark.parametrize("name", sorted(_installed_top_level() | _importable_from_repo_root()))
def test_no_other_distribution_provides_our_import_names(name):
    others = set(packages_distributions().get(name, [])) - {"flux158"}
    assert not others, f"import name {name!r} is also provided by {sorted(others)}: ours would shadow theirs"


def test_the_name_clash_that_broke_transformers_is_gone():
    assert "kernels" not in _installed_top_level() | _importable_from_repo_root()


IMPORTS = """
import flux158, flux158.kernels, flux158.eval.geneval.rules, flux158.experiments.resolve
import transformers, diffusers
from diffusers import FluxPipeline
from transformers import CLIPTextModel, T5EncoderModel
import importlib.util, pathlib
spec = importlib.util.find_spec("kernels")  # Hugging Face's distribution, where transformers depends on it
site = pathlib.Path(transformers.__file__).resolve().parents[1]
assert spec is None or pathlib.Path(spec.origin).resolve().is_relative_to(site), spec
print("ok")
"""


@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_transformers_and_diffusers_import_after_the_project(where, tmp_path):
    cwd = REPO if where == "repo_root" else tmp_path
    done = subprocess.run([sys.executable, "-c", IMPORTS], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
