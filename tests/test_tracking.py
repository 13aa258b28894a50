"""The W&B module: offline runs hold group/job_type, config, summary, tables and artifacts; logger=none is inert."""

import json

from flux158.experiments import tracking
from wandb_records import record_values, settled_records


def test_offline_run_records_everything(compose, tmp_path):
    cfg = compose("logger=wandb", "logger.mode=offline", "experiment_name=unit", output_dir=tmp_path / "out")
    result = tmp_path / "metrics.json"
    result.write_text(json.dumps({"overall": 0.5}))
    image = tmp_path / "im.png"
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(image)
    with tracking.track(cfg, "evaluate", "s1of2") as tracker:
        assert tracker.enabled
        tracker.log({"loss": 1.5})
        tracker.summary({"overall": 0.5})
        tracker.image_table("samples", ["prompt", "image"], [["a red square", image]], "image")
        tracker.artifact(result, "metrics-unit", "results", {"overall": 0.5})
    (run_file,) = (tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb")
    records = settled_records(run_file, {"run", "history", "summary", "artifact"})
    kinds = {r.WhichOneof("record_type") for r in records}
    assert {"run", "history", "summary", "artifact"} <= kinds
    run = [r.run for r in records if r.WhichOneof("record_type") == "run"][-1]
    assert (run.run_group, run.job_type, run.display_name) == ("unit", "evaluate", "evaluate-toyworld-bf16-s1of2")
    (art,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "results"]
    assert art.name == "metrics-unit"
    assert any(e.path == "metrics.json" for e in art.manifest.contents)
    summary, history = record_values(records, "summary"), record_values(records, "history")
    assert summary["overall"] == 0.5 and history["loss"] == 1.5
    assert history["samples/_type"] == "table-file" and history["samples/nrows"] == 1


def test_logger_none_is_a_no_op(compose, tmp_path):
    cfg = compose("logger=none", output_dir=tmp_path / "out")
    with tracking.track(cfg, "generate") as tracker:
        assert not tracker.enabled
        tracker.log({"x": 1})
        tracker.artifact(tmp_path, "x", "results")
    assert not (tmp_path / "out").exists()
