"""The generate stage on the tiny model: layouts, shard invariance, resume after a kill."""

from pathlib import Path

import pytest

from flux158.data import sources
from flux158.errors import LayoutError
from flux158.experiments import artifact_dirs, generate

TINY = ["experiment=smoke", "logger=none"]
TINY_MODEL = ["model=tiny", "sampler=tiny", "logger=none"]  # with a paper experiment's prompts


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (".done", "config.yaml")}


def test_geneval_layout_matches_official(compose, pinned_text, tmp_path):
    cfg = compose("experiment=geneval", *TINY_MODEL, "benchmark.limit_per_group=3", "benchmark.samples_per_prompt=2")
    out = generate.run(cfg)
    lines = pinned_text(sources.GENEVAL_METADATA).splitlines()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["00000", "00001", "00002"]
    for i in range(3):
        folder = out / f"{i:05d}"
        assert (folder / "metadata.jsonl").read_text() == lines[i]  # that prompt's line, byte for byte
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
    assert (out / ".done").exists() and (out / "config.yaml").exists()
    assert out.parent.name == "geneval" and out.name.startswith("tiny-bf16-")


def test_t2i_compbench_layout(compose, pinned_text):
    cfg = compose("experiment=t2i_compbench", *TINY_MODEL, "benchmark.limit_per_group=2",
                  "benchmark.samples_per_prompt=3",
                  "benchmark.categories=[color,numeracy]", "batch_size=2")
    out = generate.run(cfg)
    for cat in ("color", "numeracy"):
        prompts = pinned_text(sources.t2i_compbench_file(cat, "val")).splitlines()[:2]
        expected = sorted(f"{prompts[i].strip()}_{3 * i + k:06d}.png" for i in range(2) for k in range(3))
        assert sorted(p.name for p in (out / cat / "samples").iterdir()) == expected
        assert all(p.name.count("_") == 1 for p in (out / cat / "samples").iterdir())
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["color", "numeracy"]


def test_one_and_two_shards_give_identical_bytes(compose, tmp_path):
    common = [*TINY, "benchmark.samples_per_prompt=3", "batch_size=2"]
    single = generate.run(compose(*common, output_dir=tmp_path / "one"))
    for i in range(2):
        split = generate.run(compose(*common, f"shard.index={i}", "shard.count=2", output_dir=tmp_path / "two"))
        assert (split / ".done").exists() == (i == 1)  # complete only once the last shard is in
    a, b = _files(single), _files(split)
    assert len(a) == 6 * 3 + 6 and a.keys() == b.keys()
    assert a == b
    assert len({v for k, v in a.items() if k.endswith(".png")}) == 18  # every image differs from the others


def test_resume_regenerates_exactly_the_missing_image(compose):
    cfg = compose(*TINY, "batch_size=2")
    out = generate.run(cfg)
    before = _files(out)
    victim = out / "00003" / "samples" / "0001.png"
    killed = out / "00004" / "samples" / "0000.png"
    victim.unlink()
    killed.unlink()
    (killed.parent / "0000.png.partial").write_bytes(before[str(killed.relative_to(out))][:100])  # torn write
    untouched = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    generate.run(cfg)
    assert _files(out) == before
    assert not list(out.rglob("*.partial"))
    assert all(p.stat().st_mtime_ns == t for p, t in untouched.items())


def test_finished_set_is_skipped_without_loading_the_model(compose, monkeypatch):
    cfg = compose(*TINY)
    generate.run(cfg)

    def no_model(*_a, **_k):
        raise AssertionError("the model must not load when every image exists")

    monkeypatch.setattr(generate.pipeline, "load", no_model)
    assert (generate.run(cfg) / ".done").exists()


def test_artifact_dir_is_keyed_by_what_determines_the_images(compose):
    a = artifact_dirs.stage_dir(compose(*TINY), "generate")
    assert artifact_dirs.stage_dir(compose(*TINY, "model.spec.seed=1"), "generate") != a
    assert artifact_dirs.stage_dir(compose(*TINY, "sampler.num_inference_steps=2"), "generate") != a
    assert artifact_dirs.stage_dir(compose(*TINY, "experiment_name=other", "logger=wandb"), "generate") == a


def test_every_image_gets_its_own_model_independent_seed(tmp_path):
    """The pipeline receives one CPU generator per image, seeded by seed_for(base, prompt, sample) only."""
    from types import SimpleNamespace

    from PIL import Image

    from flux158.data.prompts import PromptItem
    from flux158.generation.images import SamplerSettings, generate_images
    from flux158.generation.layouts import GenEvalLayout
    from flux158.sharding import seed_for

    calls = []

    def fake_pipe(prompt, num_images_per_prompt, generator, **_):
        calls.append([g.initial_seed() for g in generator])
        return SimpleNamespace(images=[Image.new("RGB", (16, 16))] * num_images_per_prompt)

    items = [PromptItem("", 7, "a photo of a cat", {"prompt": "a photo of a cat"})]
    generate_images(fake_pipe, items, GenEvalLayout(tmp_path), samples_per_prompt=5, base_seed=42,
                    sampler=SamplerSettings(), batch_size=2, progress=False)
    assert calls == [[seed_for(42, 7, 0), seed_for(42, 7, 1)], [seed_for(42, 7, 2), seed_for(42, 7, 3)],
                     [seed_for(42, 7, 4)]]


def test_calibration_benchmark_is_not_an_image_benchmark(compose):
    with pytest.raises(LayoutError, match="no image layout"):
        generate.run(compose(*TINY, "benchmark=calibration"))


def test_t2i_layout_rejects_underscores():
    from flux158.data.prompts import PromptItem
    from flux158.generation.layouts import T2ICompBenchLayout

    with pytest.raises(LayoutError, match="'_'"):
        T2ICompBenchLayout(Path("/x"), 10).image_path(PromptItem("color", 0, "a red_car"), 0)


def test_cuda_graph_request_on_a_cpu_stays_eager_and_keys_its_folder_apart(compose, caplog):
    plain = compose(*TINY, "benchmark.samples_per_prompt=1", "benchmark.limit_per_group=2")
    fast = compose(*TINY, "benchmark.samples_per_prompt=1", "benchmark.limit_per_group=2", "cuda_graph=true",
                   "compile=true")
    assert artifact_dirs.stage_dir(fast, "generate") != artifact_dirs.stage_dir(plain, "generate")
    with caplog.at_level("WARNING"):
        out = generate.run(fast)
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "cuda_graph=true replays graphs on CUDA only" in warnings and "compiles on CUDA only" in warnings
    assert _files(out) == _files(generate.run(plain))  # eager on a CPU: the same bytes


def test_cuda_graph_with_batched_modulation_is_refused_before_anything_is_written(compose):
    from flux158.errors import Flux158Error

    cfg = compose(*TINY, "cuda_graph=true", "batched_modulation=true")
    with pytest.raises(Flux158Error, match="cannot be combined"):
        generate.run(cfg)
    assert not artifact_dirs.stage_dir(cfg, "generate").exists()


def test_the_gpu_experiments_take_the_fast_path_and_the_toy_world_stays_eager(compose):
    for experiment in ("geneval", "t2i_compbench"):
        cfg = compose(f"experiment={experiment}", *TINY_MODEL)
        assert cfg.compile is True and cfg.cuda_graph is True
    default = compose("logger=none")
    assert default.compile is False and default.cuda_graph is False
