"""Shared fixtures: offline by default, prompt files from the local benchmark mirror, Hydra composition."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The provenance-checked copies of the benchmark files (see ../shared/benchmarks/SOURCES.md); never committed here.
MIRROR = Path(os.environ.get("FLUX158_PROMPT_MIRROR", REPO.parent / "shared" / "benchmarks"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not Path("/dev/nvidiactl").exists():
    # No GPU: Triton kernels run in its interpreter (set before anything imports triton).
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "SOURCES.md").exists():
        pytest.fail(f"benchmark mirror not found at {MIRROR}; set FLUX158_PROMPT_MIRROR to shared/benchmarks")
    return MIRROR


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny-model cache for the whole session (the model is built once, then reloaded)."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def compose(tmp_path: Path, mirror: Path, model_cache: Path) -> Callable[..., object]:
    """Compose the project config with test paths (tmp outputs, mirror prompts, shared model cache)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(*overrides: str, output_dir: Path | None = None):
        base = [
            f"paths.output_dir={output_dir or tmp_path / 'outputs'}",
            f"paths.prompt_mirror={mirror}",
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
