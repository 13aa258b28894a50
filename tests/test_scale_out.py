"""Scale-out as users launch it: torchrun (what `accelerate launch` runs), two runs on one config at once, a SLURM-style
array through Hydra's `submitit_local` launcher, and processes killed mid-way. Every run here is the toy world on CPU,
each process with OMP_NUM_THREADS=1 (CPU float sums depend on the thread count, and torchrun sets 1)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO, run_cli

TOY = ["logger=none", "benchmark.per_tag=3"]  # 6 tags x 3 prompts x 4 images = 72 images
IMAGES = 72


def _env(out: Path) -> dict[str, str]:
    return {"FLUX158_OUTPUT_DIR": str(out), "OMP_NUM_THREADS": "1"}


def _images(out: Path) -> dict[str, bytes]:
    (gen,) = (out / "generate" / "toyworld").iterdir()
    return {str(p.relative_to(gen)): p.read_bytes() for p in sorted(gen.rglob("*.png"))}


def _leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".partial")]


def _torchrun(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             str(REPO / "run.py"), *TOY, *args], cwd=REPO, env={**os.environ, **_env(out)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_images(out: Path, count: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((out / "generate").rglob("*.png"))) >= count:
            return
        assert proc.poll() is None, "the run ended before it was killed:\n" + proc.communicate()[0]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} images after {timeout} s")


def _generated(log: str) -> int:
    """Images written, summed over the processes' "generated N images, skipped M existing" lines."""
    return sum(int(n) for n in re.findall(r"generated (\d+) images, skipped", log))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, bytes]:
    """The images of a plain one-process `python run.py`: what every split and every resumed run must equal."""
    out = tmp_path_factory.mktemp("one")
    proc = run_cli(*TOY, "stages=[generate]", env=_env(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    images = _images(out)
    assert len(images) == IMAGES
    return images


def test_torchrun_completes_every_stage_on_its_first_launch(tmp_path, one_process):
    """The issue's command: 2 ranks, calibrate -> quantize -> generate -> evaluate, both ranks exit 0 on the first
    launch; the images are the one-process bytes and the evaluation ran once, on the main process."""
    proc = _torchrun(tmp_path)
    text = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, text
    assert "(shard 0 of 2)" in text and "(shard 1 of 2)" in text
    assert _images(tmp_path) == one_process
    (metrics,) = (tmp_path / "evaluate" / "toyworld").glob("*/metrics.json")
    assert json.loads(metrics.read_text())["num_images"] == IMAGES
    assert text.count("evaluate: overall") == 1 and "rank 1: done; the main process runs evaluate" in text
    assert "Traceback" not in text and not _leftovers(tmp_path)


def test_a_rank_killed_mid_generate_then_a_relaunch_completes(tmp_path, one_process):
    """SIGKILL one rank half-way: the launch fails (torchrun stops the other rank); the same command again resumes
    (the killed rank's lock is gone with it, its temp files are swept) and gives the one-process images."""
    proc = _torchrun(tmp_path)
    _wait_for_images(tmp_path, 12, proc)
    ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "run.py" in " ".join(p.cmdline())]
    victim = next(p for p in ranks if p.environ().get("RANK") == "1")
    victim.send_signal(signal.SIGKILL)
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    partway = len(list((tmp_path / "generate").rglob("*.png")))
    assert 12 <= partway < IMAGES

    again = _torchrun(tmp_path)
    text = again.communicate(timeout=600)[0]
    assert again.returncode == 0, text
    assert _generated(text) == IMAGES - partway  # exactly the missing images, nothing twice
    assert _images(tmp_path) == one_process
    assert list((tmp_path / "evaluate" / "toyworld").glob("*/metrics.json"))
    assert not _leftovers(tmp_path)


def test_two_identical_runs_at_once_share_the_work(tmp_path):
    """Two `python run.py` on one config at the same moment (a data-free method with calibration, so calibrate and
    quantize are shared too): both exit 0 without a traceback, every image exists once, and the calibration,
    quantize, each image and the evaluation were made by one of them only (the other waited on the lock, or found
    the work done)."""
    # toy calibration (used here to measure the output error) cut to 40 prompts in 5 chunks, so it is shared too
    calib = ["calib.num_prompts=32", "calib.heldout=8", "calib.chunk_size=8"]
    args = [sys.executable, str(REPO / "run.py"), *TOY, "quant=absmean", *calib]
    env = {**os.environ, **_env(tmp_path)}
    runs = [subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    texts = [r.communicate(timeout=600)[0] for r in runs]
    for run, text in zip(runs, texts, strict=True):
        assert run.returncode == 0, text
        assert "Traceback" not in text
    both = "\n".join(texts)
    captured = [t for t in texts if "teacher on" in t and "4 of this shard's 4 chunks already on disk" not in t]
    assert len(captured) == 1  # the other found the chunks made, after waiting or at once
    assert len(re.findall(r"quantize: \d+ layers in", both)) == 1
    assert _generated(both) == IMAGES
    assert both.count("evaluate: overall") == 1
    (gen,) = (tmp_path / "generate" / "toyworld").iterdir()
    assert len(list(gen.rglob("*.png"))) == IMAGES and (gen / ".done").exists()
    assert not _leftovers(tmp_path)
    (qdir,) = (tmp_path / "quantize").iterdir()
    assert (qdir / ".done").exists()


def test_submitit_array_generates_its_shards_and_the_last_shard_evaluates(tmp_path, one_process):
    """`-m hydra/launcher=submitit_local shard.count=2 'shard.index=range(0,2)'`, the SLURM array's local twin. One
    shard job is killed half-way: that launch fails. The same command again resumes the killed shard, the other
    finds its share done, and the job that completes the images evaluates them, once, with no one watching."""
    args = [sys.executable, str(REPO / "run.py"), "-m", "hydra/launcher=submitit_local", "shard.count=2",
            "shard.index=range(0,2)", *TOY]
    env = {**os.environ, **_env(tmp_path)}
    first = subprocess.Popen([*args, f"hydra.sweep.dir={tmp_path / 'sweep1'}"], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_images(tmp_path, 12, first)
    launched = psutil.Process(first.pid).children(recursive=True)
    tasks = [p for p in launched if "submitit.core._submit" in " ".join(p.cmdline())]
    assert len(tasks) == 2
    tasks[0].send_signal(signal.SIGKILL)
    first.communicate(timeout=300)
    assert first.returncode != 0
    psutil.wait_procs(launched, timeout=300)  # the surviving shard job may outlive its launcher; let it finish
    partway = len(list((tmp_path / "generate").rglob("*.png")))
    assert partway < IMAGES

    again = subprocess.run([*args, f"hydra.sweep.dir={tmp_path / 'sweep2'}"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _images(tmp_path) == one_process
    (metrics,) = (tmp_path / "evaluate" / "toyworld").glob("*/metrics.json")
    assert json.loads(metrics.read_text())["num_images"] == IMAGES
    logs = "\n".join(p.read_text() for p in (tmp_path / "sweep2").glob("*/run.log"))
    assert logs.count("evaluate: overall") == 1
    assert "the shard job that completes them evaluates them; this job's work is done" in logs
    assert _generated(logs) == IMAGES - partway
    assert not _leftovers(tmp_path)


class Killed(Exception):
    """Stands for the SIGKILL, out-of-memory or SLURM time limit that stops a run between two lines."""


def _killed(*_args, **_kwargs):
    raise Killed


def test_quantize_stopped_after_saving_writes_its_record_instead_of_quantizing_again(compose, monkeypatch):
    """quantize saved `transformer/` and then died while measuring it (no metrics.json, no .done): the rerun
    verifies the checkpoint, writes the missing record, does not quantize again, and only then drops `blocks/`."""
    from flux158.experiments import artifact_dirs, calibrate, quantize

    cfg = compose("experiment=smoke", "quant=gptq", "logger=none")
    calibrate.run(cfg)

    monkeypatch.setattr(quantize, "_record", _killed)
    with pytest.raises(Killed):
        quantize.run(cfg)
    out = artifact_dirs.quantize_artifact(cfg)[0]
    checkpoint = out / "transformer"
    assert (checkpoint / "quantization.json").exists() and (out / "blocks").is_dir()
    assert not (out / ".done").exists() and not (out / "metrics.json").exists()
    saved = {p.name: p.read_bytes() for p in checkpoint.iterdir()}

    monkeypatch.undo()

    def not_again(*_args, **_kwargs):
        raise AssertionError("a saved, verified checkpoint must not be quantized again")

    monkeypatch.setattr(quantize, "quantize_", not_again)
    monkeypatch.setattr(quantize, "save_quantized", not_again)
    quantize.run(cfg)
    assert (out / ".done").exists() and not (out / "blocks").exists()
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == saved
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["layers_quantized"] == len(metrics["layers"]) == 40
    assert metrics["metrics"]["output_rel_mse"] > 0 and metrics["metrics"]["seconds"] > 0


def test_a_saved_checkpoint_that_does_not_verify_is_quantized_again(compose, monkeypatch):
    from flux158.experiments import artifact_dirs, calibrate, quantize

    cfg = compose("experiment=smoke", "quant=absmean", "logger=none")
    calibrate.run(cfg)
    monkeypatch.setattr(quantize, "_record", _killed)
    with pytest.raises(Killed):
        quantize.run(cfg)
    monkeypatch.undo()
    out = artifact_dirs.quantize_artifact(cfg)[0]
    weights = out / "transformer" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF  # one flipped bit in the last tensor's data
    weights.write_bytes(bytes(blob))
    calls = []
    real = quantize.quantize_
    monkeypatch.setattr(quantize, "quantize_", lambda *a, **k: calls.append(1) or real(*a, **k))
    quantize.run(cfg)
    assert calls == [1] and (out / ".done").exists()
    assert weights.read_bytes() != bytes(blob)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temp_files_are_unique_per_writer_and_only_a_dead_writers_are_swept(tmp_path, monkeypatch):
    from flux158.artifacts import atomic_write_text, partial_path, remove_stale_partials

    monkeypatch.setattr(socket, "gethostname", lambda: "gpu-node-7.cluster")  # hyphens and dots, as on clusters

    target = tmp_path / "metrics.json"
    assert partial_path(target) != partial_path(target)  # two writers in one process differ too
    host = partial_path(target).name.split(".")[2].rsplit("-", 2)[0]
    dead = tmp_path / f"metrics.json.{host}-{_dead_pid()}-0000aaaa.partial"
    alive = tmp_path / f"metrics.json.{host}-{os.getpid()}-0000bbbb.partial"
    elsewhere = tmp_path / "metrics.json.otherhost-1-0000cccc.partial"  # another machine's live writer, maybe
    legacy = tmp_path / "metrics.json.partial"  # the fixed temp name of older versions
    for leftover in (dead, alive, elsewhere, legacy):
        leftover.write_text("half")
    assert remove_stale_partials(target) == 2
    assert alive.exists() and elsewhere.exists() and not dead.exists() and not legacy.exists()
    os.utime(elsewhere, (time.time() - 2 * 86400,) * 2)  # a day old: its writer is gone
    assert remove_stale_partials(target) == 1 and not elsewhere.exists()
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, target.name])


def test_a_lock_held_by_a_killed_process_does_not_block_the_next(tmp_path, caplog):
    """The holder is SIGKILLed inside the lock: the OS drops its flock, so the next process takes it at once."""
    from flux158.artifacts import artifact_lock

    lock_file = tmp_path / ".locks" / "quantize" / "x.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); "
         "lock.acquire(); print('held', flush=True); time.sleep(600)", str(lock_file)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with caplog.at_level("INFO", logger="flux158.artifacts"):
        killer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(1); os.kill({holder.pid}, 9)"])
        started = time.monotonic()
        with artifact_lock(lock_file, "quantize", "x"):
            waited = time.monotonic() - started
        killer.wait()
    holder.wait()
    assert 0.5 < waited < 30  # it waited for the live holder, and not a moment past its death
    assert "another process is making x; waiting for it" in caplog.text
    with artifact_lock(lock_file, "quantize", "x"):  # and the lock file left behind blocks nobody
        pass


def test_evaluate_refuses_a_folder_that_lost_images_after_generate(compose):
    """Issue 37 point 2: a prompt folder deleted after `.done` (as an old error message invited) used to be scored on
    fewer images without a word; now evaluate names what is missing, scores nothing, and generate remakes it."""
    from flux158.errors import Flux158Error
    from flux158.experiments import artifact_dirs, evaluate, generate

    cfg = compose("experiment=toyworld", "benchmark.per_tag=1", "logger=none")
    images = generate.run(cfg)
    lost = images / "00003"
    kept = (lost / "samples" / "0002.png").read_bytes()
    shutil.rmtree(lost)
    with pytest.raises(Flux158Error, match=r"4 of the 24 images .* are missing or not whole \(e\.g\. 00003/"):
        evaluate.run(cfg)
    assert not artifact_dirs.evaluate_artifact(cfg)[0].exists()
    generate.run(cfg)
    assert (lost / "samples" / "0002.png").read_bytes() == kept
    metrics = json.loads((evaluate.run(cfg) / "metrics.json").read_text())
    assert metrics["num_images"] == 24


def test_a_killed_writers_sidecar_temp_file_is_swept_when_generation_resumes(compose):
    """A rank killed while writing a prompt's metadata.jsonl leaves its temp file; the relaunch that resumes the
    shard removes it (seen once in the SIGKILL test above, when the kill landed on a sidecar write)."""
    from flux158.experiments import generate

    cfg = compose("experiment=toyworld", "benchmark.per_tag=1", "benchmark.samples_per_prompt=1", "logger=none")
    images = generate.run(cfg)
    host = socket.gethostname().replace(".", "_")
    leftover = images / "00003" / f"metadata.jsonl.{host}-{_dead_pid()}-0000aaaa.partial"
    leftover.write_text("{")
    (images / "00003" / "samples" / "0000.png").unlink()
    (images / ".done").unlink()
    generate.run(cfg)
    assert not leftover.exists() and (images / "00003" / "samples" / "0000.png").exists()
