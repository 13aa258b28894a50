"""Issue 37 point 1: an artifact is keyed by what made it. Change an input's content and its artifacts move to a new
directory; move the same content elsewhere and they stay."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from flux158.errors import ConfigError
from flux158.experiments import artifact_dirs, processes, resolve
from flux158.models import identity
from flux158.quant.checkpoint import QuantizedCheckpointError


def _checkpoint(directory: Path, weights_sha256: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "quantization.json").write_text(json.dumps({"method": "twn", "sha256": {"a": weights_sha256}}))
    return directory


def test_a_checkpoint_is_keyed_by_its_recorded_hashes_not_its_path(compose, tmp_path):
    path = _checkpoint(tmp_path / "ckpt", "1" * 64)

    def dirs(checkpoint: Path) -> tuple[Path, Path]:
        cfg = compose("experiment=smoke", "quant=twn", f"quant.checkpoint={checkpoint}", "logger=none")
        return artifact_dirs.stage_dir(cfg, "generate"), artifact_dirs.stage_dir(cfg, "evaluate")

    first = dirs(path)
    _checkpoint(path, "2" * 64)  # replaced in place
    replaced = dirs(path)
    assert replaced[0] != first[0] and replaced[1] != first[1]
    moved = _checkpoint(tmp_path / "elsewhere" / "ckpt", "1" * 64)
    assert dirs(moved) == first
    with pytest.raises(QuantizedCheckpointError, match="is not a quantized checkpoint"):
        dirs(tmp_path / "nothing-here")


def _pipeline_dir(directory: Path, weights: bytes) -> Path:
    (directory / "transformer").mkdir(parents=True, exist_ok=True)
    (directory / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    (directory / "transformer" / "model.safetensors").write_bytes(weights)
    return directory


def test_a_local_model_directory_is_keyed_by_its_files(compose, tmp_path, monkeypatch):
    model = _pipeline_dir(tmp_path / "flux-copy", b"weights v1")

    def generate_dir(path: Path) -> Path:
        return artifact_dirs.stage_dir(compose("experiment=geneval", f"model.pretrained={path}", "logger=none"),
                                       "generate")

    first = generate_dir(model)
    (model / "transformer" / "model.safetensors").write_bytes(b"weights v2")  # replaced in place
    second = generate_dir(model)
    assert second != first
    moved = tmp_path / "moved" / "flux-copy"
    shutil.copytree(model, moved)
    assert generate_dir(moved) == second

    hashed: list[Path] = []
    real = identity.sha256_file
    monkeypatch.setattr(identity, "sha256_file", lambda path: hashed.append(path) or real(path))
    assert generate_dir(moved) == second and hashed == []  # cached: nothing hashed again
    (moved / "transformer" / "model.safetensors").write_bytes(b"weights v1")
    assert generate_dir(moved) == first
    assert hashed == [moved.resolve() / "transformer" / "model.safetensors"]  # only the changed file


def _hub_cache(root: Path, repo: str, commit: str) -> None:
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (folder / "snapshots" / commit / "model_index.json").write_text("{}")


def test_a_floating_hub_revision_is_resolved_to_a_commit_and_keyed_by_it(compose, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo, old, new = "black-forest-labs/FLUX.1-dev", "a" * 40, "b" * 40
    _hub_cache(tmp_path / "hub", repo, old)

    def pinned_generate_dir() -> tuple[str, Path]:
        cfg = compose("experiment=geneval", "logger=none")
        assert cfg.model.spec.revision is None
        resolve.pin_model_revision(cfg)
        return cfg.model.spec.revision, artifact_dirs.stage_dir(cfg, "generate")

    revision, first = pinned_generate_dir()
    assert revision == old
    _hub_cache(tmp_path / "hub", repo, new)  # the hub's main moved on, and was downloaded
    revision, second = pinned_generate_dir()
    assert revision == new and second != first
    cfg = compose("experiment=geneval", "logger=none", f"model.spec.revision={old}")
    resolve.pin_model_revision(cfg)  # a commit is kept as it is
    assert cfg.model.spec.revision == old and artifact_dirs.stage_dir(cfg, "generate") == first


def _git(checkout: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_an_official_checkout_is_keyed_by_its_commit_and_changes(compose, tmp_path):
    checkout = tmp_path / "T2I-CompBench"
    checkout.mkdir()
    _git(checkout, "init", "-q")
    (checkout / "eval.py").write_text("print(1)\n")
    _git(checkout, "add", "eval.py")
    _git(checkout, "commit", "-qm", "one")

    def evaluate_dir(path: Path) -> Path:
        cfg = compose("experiment=t2i_compbench", "model=tiny", f"benchmark.official_checkout={path}", "logger=none")
        return artifact_dirs.stage_dir(cfg, "evaluate")

    first = evaluate_dir(checkout)
    (checkout / "eval.py").write_text("print(2)\n")  # edited, not committed
    dirty = evaluate_dir(checkout)
    _git(checkout, "commit", "-qam", "two")
    committed = evaluate_dir(checkout)
    assert len({first, dirty, committed}) == 3
    shutil.copytree(checkout, tmp_path / "copy")
    assert evaluate_dir(tmp_path / "copy") == committed
    (tmp_path / "not-git").mkdir()
    with pytest.raises(ConfigError, match="is not a git checkout"):
        evaluate_dir(tmp_path / "not-git")


def test_data_parallel_distill_is_keyed_by_its_process_count(compose, monkeypatch):
    configs = {quant: compose("experiment=toyworld", f"quant={quant}", "logger=none") for quant in ("distill", "twn")}

    def dirs() -> dict[str, tuple[Path, Path]]:
        return {quant: (artifact_dirs.stage_dir(cfg, "quantize"), artifact_dirs.stage_dir(cfg, "generate"))
                for quant, cfg in configs.items()}

    single = dirs()
    monkeypatch.setattr(processes, "num_processes", lambda: 2)
    two = dirs()
    assert two["distill"][0] != single["distill"][0] and two["distill"][1] != single["distill"][1]
    assert artifact_dirs.quantize_artifact(configs["distill"])[1]["distill_processes"] == 2
    assert two["twn"] == single["twn"]  # a data-free method gives the same weights on any process count


def test_a_null_min_area_is_keyed_as_the_detector_default_it_means(compose):
    from flux158.eval.toyworld.detector import MIN_AREA

    default = compose("experiment=toyworld", "logger=none")
    null = compose("experiment=toyworld", "logger=none", "benchmark.min_area=null")
    explicit = compose("experiment=toyworld", "logger=none", f"benchmark.min_area={MIN_AREA}")
    assert artifact_dirs.stage_dir(null, "evaluate") == artifact_dirs.stage_dir(explicit, "evaluate") == \
        artifact_dirs.stage_dir(default, "evaluate")
    # the evaluations made before the detector fix were keyed without min_area; today's never share their directory
    before_fix = artifact_dirs.keyed_dir(null, ["evaluate", "toyworld"], "toyworld-bf16", artifact_dirs.EVALUATE_KEYS)
    assert before_fix[0] != artifact_dirs.stage_dir(null, "evaluate")
