"""Shared fixtures: offline by default, the benchmark prompt files (see `find_prompt_files`), Hydra composition."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The provenance-checked copies of the benchmark files beside this repository (../shared/benchmarks/SOURCES.md).
SHARED_MIRROR = REPO.parent / "shared" / "benchmarks"
# Whether the user allows the network: read before the tests' own default (offline) is set below.
NETWORK_ALLOWED = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not Path("/dev/nvidiactl").exists():
    # No GPU: Triton kernels run in its interpreter (set before anything imports triton).
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flux158" / "benchmarks"


@functools.cache
def find_prompt_files() -> tuple[Path | None, str]:
    """A directory holding every pinned benchmark file (found by content, any names), or None and why not.

    In order: `FLUX158_PROMPT_MIRROR`; `../shared/benchmarks`; the pinned URLs, downloaded into the user's cache
    (`$XDG_CACHE_HOME/flux158/benchmarks`) unless `HF_HUB_OFFLINE=1`. The first failed download ends the search.
    """
    from flux158.data.pinned import fetch
    from flux158.data.sources import all_pinned_files
    from flux158.errors import PromptDataError

    if variable := os.environ.get("FLUX158_PROMPT_MIRROR"):
        if not Path(variable).is_dir():
            pytest.exit(f"FLUX158_PROMPT_MIRROR={variable} is not a directory", returncode=2)
        return Path(variable), ""
    if (SHARED_MIRROR / "SOURCES.md").exists():
        return SHARED_MIRROR, ""
    absent = f"no benchmark prompt files (set FLUX158_PROMPT_MIRROR): {SHARED_MIRROR} does not exist"
    if not NETWORK_ALLOWED:
        return None, f"{absent} and HF_HUB_OFFLINE=1 forbids downloading them"
    cache = _user_cache()
    try:
        for pinned in all_pinned_files():
            fetch(pinned, cache, offline=False, timeout_s=20)
    except PromptDataError as e:
        return None, f"{absent} and downloading failed: {str(e).split('. Download it')[0]}"
    return cache, ""


@pytest.fixture(scope="session")
def prompt_files() -> tuple[Path | None, str]:
    return find_prompt_files()


@pytest.fixture(scope="session")
def mirror(prompt_files) -> Path:
    """The directory of benchmark prompt files; tests that need it are skipped, with the reason, when there is none."""
    directory, why_not = prompt_files
    if directory is None:
        pytest.skip(why_not)
    return directory


@pytest.fixture(scope="session")
def pinned_path(mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """A pinned benchmark file, found in the mirror by its sha256 (whatever its name there)."""
    from flux158.data.pinned import fetch

    cache = tmp_path_factory.mktemp("pinned")
    return lambda pinned: fetch(pinned, cache, [mirror], offline=True)


@pytest.fixture(scope="session")
def pinned_text(pinned_path) -> Callable[..., str]:
    return lambda pinned: pinned_path(pinned).read_text()


@pytest.fixture(scope="session")
def shared_reference() -> Callable[[str], Path]:
    """A reference file that exists only in ../shared/benchmarks (made independently of this code, not pinned
    upstream); tests that compare with one are skipped when it is absent."""

    def _get(relative: str) -> Path:
        for root in (os.environ.get("FLUX158_PROMPT_MIRROR"), SHARED_MIRROR):
            if root and (Path(root) / relative).is_file():
                return Path(root) / relative
        pytest.skip(f"reference file {relative} is only in shared/benchmarks, which is not here")

    return _get


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Offline with no prompt files, a test that stopped for want of one is skipped (the files' absence is the
    machine's, not the code's); with prompt files present the same error stays a failure."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or report.outcome != "failed":
        return
    from flux158.errors import PromptDataError

    directory, why_not = find_prompt_files()
    if directory is None and call.excinfo.errisinstance(PromptDataError):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {why_not}")



@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny-model cache for the whole session (the model is built once, then reloaded)."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def compose(tmp_path: Path, prompt_files, model_cache: Path) -> Callable[..., object]:
    """Compose the project config with test paths (tmp outputs, the prompt files if any, shared model cache)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(*overrides: str, output_dir: Path | None = None):
        base = [
            f"paths.output_dir={output_dir or tmp_path / 'outputs'}",
            f"paths.prompt_mirror={prompt_files[0] or 'null'}",
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.cache_dir={model_cache}",
        ]
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            return hydra_compose("config", overrides=base + list(overrides))

    return _compose


# The tiny random FLUX's calibration set, shared by the calibrated-method tests.
TINY_PROMPTS = ["a red bicycle", "two dogs on a beach", "a lighthouse at night", "a green apple", "a cat on a sofa",
                "a blue car", "three birds on a wire", "a cup of coffee"]


def tiny_sampler():
    from flux158.generation.images import SamplerSettings

    return SamplerSettings(num_inference_steps=4, guidance_scale=3.5, height=32, width=32, max_sequence_length=16)


def fresh_transformer(model_cache: Path):
    """A new copy of the tiny FLUX transformer (the model is built once per session, then reloaded)."""
    from diffusers import FluxPipeline

    from flux158.models.tiny import TinyFluxSpec, ensure_tiny_pipeline

    return FluxPipeline.from_pretrained(ensure_tiny_pipeline(TinyFluxSpec(), model_cache)).transformer


@pytest.fixture(scope="session")
def tiny_pipe(model_cache: Path):
    from diffusers import FluxPipeline

    from flux158.models.tiny import TinyFluxSpec, ensure_tiny_pipeline

    pipe = FluxPipeline.from_pretrained(ensure_tiny_pipeline(TinyFluxSpec(), model_cache))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def calib_dir(tiny_pipe, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Teacher calibration records of the tiny FLUX on TINY_PROMPTS (2 states per prompt)."""
    from flux158.quant.calibration import CaptureSettings, write_calibration

    directory = tmp_path_factory.mktemp("calib")
    write_calibration(tiny_pipe, TINY_PROMPTS, directory, "train", tiny_sampler(), CaptureSettings(2, 3, 2, 0),
                      progress=False)
    return directory


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO, timeout: int = 300):
    """Run `python run.py ARGS` in a subprocess; returns the CompletedProcess (text, both streams)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
