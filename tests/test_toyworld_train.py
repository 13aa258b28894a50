"""Toy-world training: a few steps run, checkpoints resume exactly, corrupt checkpoints fail clearly."""

import pytest
import torch
from safetensors.torch import load_file

from flux158.errors import Flux158Error
from flux158.toyworld.model import ToyWorldSpec, image_ids, pack, unpack
from flux158.toyworld.pipeline import ToyWorldPipeline
from flux158.toyworld.train import ToyTrainConfig, make_batch, train_toyworld

SPEC = ToyWorldSpec(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=16,
                    axes_dims_rope=(4, 6, 6), text_dim=32)
CONFIG = ToyTrainConfig(steps=4, batch_size=8, warmup_steps=1, checkpoint_every=2, sample_every=2, sample_steps=2)


class Killed(Exception):
    pass


def _weights(model_dir):
    return {k: v for sub in ("transformer", "text_encoder")
            for k, v in load_file(next((model_dir / sub).glob("*.safetensors"))).items()}


def test_pack_is_flux_packing_and_inverts():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    tokens = pack(x, 4)
    assert tokens.shape == (2, 4, 48)
    assert torch.equal(tokens[0, 1, :16], x[0, 0, 0:4, 4:8].reshape(-1))  # token (row 0, col 1), channel 0 first
    assert torch.equal(unpack(tokens, 8, 8, 4), x)
    assert image_ids(8, 8, 4).tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]


def test_batches_are_deterministic_per_step():
    a, ca = make_batch(0, 7, 4, 32, 0.5)
    b, cb = make_batch(0, 7, 4, 32, 0.5)
    assert torch.equal(a, b) and ca == cb
    assert not torch.equal(a, make_batch(0, 8, 4, 32, 0.5)[0])
    assert a.min() >= -1 and a.max() <= 1


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path):
    prompts = ["a photo of a red circle"]
    straight = train_toyworld(SPEC, CONFIG, tmp_path / "straight", prompts, progress=False)

    def kill_at_2(step, _path):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        train_toyworld(SPEC, CONFIG, tmp_path / "resumed", prompts, on_samples=kill_at_2, progress=False)
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-0000002"]
    resumed = train_toyworld(SPEC, CONFIG, tmp_path / "resumed", prompts, progress=False)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step-0000002",
                                                                                        "step-0000004"]
    pipe = ToyWorldPipeline.from_pretrained(resumed)
    assert pipe("a photo of a circle", num_inference_steps=2).images[0].size == (32, 32)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    prompts = ["a photo of a circle"]
    short = ToyTrainConfig(**{**CONFIG.__dict__, "steps": 2})
    train_toyworld(SPEC, short, tmp_path, prompts, progress=False)
    (tmp_path / "checkpoints" / "step-0000002" / "optimizer.safetensors").write_bytes(b"garbage")
    with pytest.raises(Flux158Error, match="corrupt"):
        train_toyworld(SPEC, CONFIG, tmp_path, prompts, progress=False)


def test_the_toy_models_of_the_scale_comparison_have_the_stated_sizes(compose):
    from hydra.utils import instantiate

    from flux158.toyworld.model import build_transformer

    def params(experiment: str) -> int:
        spec = instantiate(compose(f"experiment={experiment}").toyworld.spec)
        return sum(p.numel() for p in build_transformer(spec).parameters())

    small, committed, large = (params(f"toyworld_train{size}") for size in ("_small", "", "_large"))
    # the sizes the configs and docs/toyworld.md quote
    assert (small, committed, large) == (1_810_096, 4_117_584, 7_793_712)
    assert 2 * committed < 10_000_000  # the 10 MB budget of a committed model, in fp16


def test_the_committed_model_is_reproducible_from_its_config(compose):
    """`python run.py experiment=toyworld_train` trains exactly what flux158/toyworld/weights was exported from."""
    import yaml

    from flux158.experiments import artifact_dirs
    from flux158.models import ToyWorldSource

    _, determining = artifact_dirs.toyworld_train_artifact(compose("experiment=toyworld_train"))
    recorded = yaml.safe_load((ToyWorldSource().resolve() / "training_config.yaml").read_text())
    assert recorded == determining


def test_export_replaces_only_an_earlier_export_and_never_leaves_half_a_model(tmp_path, monkeypatch):
    """`toyworld.export_to` (issue 37, point 4): a folder that is not an export is refused and untouched; an earlier
    export is swapped for the new one; a copy that fails half-way leaves the earlier export as it was."""
    import shutil

    import pytest

    from flux158.errors import Flux158Error
    from flux158.toyworld.export import check_export_target, export_model

    model = tmp_path / "model"
    (model / "transformer").mkdir(parents=True)
    (model / "transformer" / "weights.bin").write_bytes(b"new weights")
    precious = tmp_path / "my_thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    with pytest.raises(Flux158Error, match="not an earlier toy-world export"):
        check_export_target(precious)
    with pytest.raises(Flux158Error):
        export_model(model, precious, "spec: {}\n")
    assert [p.name for p in precious.iterdir()] == ["chapter1.tex"]

    target = tmp_path / "weights"
    export_model(model, target, "spec: {width: 1}\n")
    assert (target / "transformer" / "weights.bin").read_bytes() == b"new weights"
    assert (target / "training_config.yaml").read_text() == "spec: {width: 1}\n"

    (model / "transformer" / "weights.bin").write_bytes(b"newer weights")
    real_copy = shutil.copyfile

    def disk_full(src, dst, *args, **kwargs):
        real_copy(src, dst, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    with pytest.raises(OSError):
        export_model(model, target, "spec: {width: 2}\n")
    monkeypatch.undo()
    assert (target / "transformer" / "weights.bin").read_bytes() == b"new weights"  # the earlier export, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "my_thesis", "weights"]  # no temp left

    export_model(model, target, "spec: {width: 2}\n")
    assert (target / "transformer" / "weights.bin").read_bytes() == b"newer weights"
    assert (target / "training_config.yaml").read_text() == "spec: {width: 2}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "my_thesis", "weights"]
