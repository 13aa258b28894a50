"""`python run.py` end to end in a subprocess: the smoke run, its logs, W&B offline, and the offline FLUX error."""

import json

from conftest import run_cli
from wandb_records import record_values, settled_records


def test_smoke_run_writes_images_log_and_offline_wandb(tmp_path, model_cache):
    env = {"FLUX158_OUTPUT_DIR": str(tmp_path), "FLUX158_CACHE_DIR": str(model_cache), "WANDB_MODE": "offline"}
    proc = run_cli("experiment=smoke", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    (gen,) = (tmp_path / "generate" / "smoke").iterdir()
    assert len(list(gen.glob("0000[0-5]/samples/000[01].png"))) == 12
    (log,) = (tmp_path / "hydra" / "smoke").glob("*/run.log")
    text = log.read_text()
    assert "experiment=smoke" in text and "commit" in text and "generated 12 images" in text

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    records = settled_records(next(run_dir.glob("run-*.wandb")), {"run", "summary"})
    run = [r.run for r in records if r.WhichOneof("record_type") == "run"][-1]
    assert (run.project, run.run_group, run.job_type) == ("flux158", "smoke", "generate")
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["model"]["name"] == "tiny" and config["seed"] == 42
    summary = record_values(records, "summary")
    assert summary["images_generated"] == 12 and summary["images_skipped"] == 0

    again = run_cli("experiment=smoke", env=env)  # a rerun finds the finished set and skips it
    assert again.returncode == 0 and "nothing to do" in again.stdout + again.stderr


def test_flux_dev_offline_stops_with_instructions(tmp_path, mirror):
    env = {"FLUX158_OUTPUT_DIR": str(tmp_path / "out"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "FLUX158_PROMPT_MIRROR": str(mirror)}
    proc = run_cli("experiment=geneval", env=env, timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    assert "black-forest-labs/FLUX.1-dev" in text and "huggingface-cli login" in text
    assert "accept the licence" in text and "model.pretrained=" in text
    assert not (tmp_path / "out" / "generate").exists()


def test_default_run_is_the_scored_toy_world(tmp_path):
    """The README's main job: `python run.py` generates the toy world and writes real scores with intervals, logged to
    W&B (3.5 minutes on 2 cores)."""
    proc = run_cli(env={"FLUX158_OUTPUT_DIR": str(tmp_path), "WANDB_MODE": "offline"}, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (metrics_file,) = (tmp_path / "evaluate" / "toyworld").glob("*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["num_images"] == 2400 and metrics["metrics"]["overall"] > 0.3  # measured 0.380
    low, high = metrics["intervals"]["overall"]
    assert low <= metrics["metrics"]["overall"] <= high and high - low <= 0.04  # measured [0.363, 0.397]
    assert "evaluate: overall" in proc.stdout + proc.stderr  # the run ends with the score and its interval
    assert metrics["paper_protocol"] is False and metrics["protocol_deviations"] == [
        "benchmark=toyworld (the paper reports geneval and t2i_compbench)"]
    assert len(metrics["pairing_key"]) == 8 and len(metrics["model_weights_sha256"]) == 16
    jobs = set()
    for run_file in (tmp_path / "wandb").glob("offline-run-*/run-*.wandb"):
        records = settled_records(run_file, {"run", "summary"})
        run = [r.run for r in records if r.WhichOneof("record_type") == "run"][-1]
        jobs.add(run.job_type)
        if run.job_type == "evaluate":
            assert record_values(records, "summary")["overall"] == metrics["metrics"]["overall"]
    assert jobs == {"generate", "evaluate"}
