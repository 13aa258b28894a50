"""Every experiment composes and instantiates; bad choices fail with Hydra's list of options."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from conftest import REPO, run_cli
from flux158.experiments import pipeline, resolve
from flux158.generation.images import SamplerSettings
from flux158.models import HubFluxSpec, TinyFluxSpec, ToyWorldSource
from flux158.models.random import RandomFluxSpec

EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))


def test_expected_experiments_exist():
    assert {"smoke", "geneval", "t2i_compbench", "toyworld", "toyworld_train"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(compose, experiment):
    cfg = compose(f"experiment={experiment}")
    assert cfg.experiment_name == experiment
    assert isinstance(instantiate(cfg.sampler), SamplerSettings)
    assert isinstance(resolve.model_spec(cfg), (HubFluxSpec, TinyFluxSpec, RandomFluxSpec, ToyWorldSource))
    from run import STAGES

    assert set(cfg.stages) <= set(STAGES)


def test_paper_experiments_use_paper_settings(compose):
    cfg = compose("experiment=geneval")
    spec = resolve.model_spec(cfg)
    assert spec == HubFluxSpec("black-forest-labs/FLUX.1-dev", gated=True) and cfg.model.dtype == "bfloat16"
    assert instantiate(cfg.sampler) == SamplerSettings(num_inference_steps=50, guidance_scale=3.5, height=1024,
                                                       width=1024, max_sequence_length=512)
    assert cfg.benchmark.samples_per_prompt == 4 and cfg.quant.name == "bf16"
    t2i = compose("experiment=t2i_compbench")
    assert t2i.benchmark.samples_per_prompt == 10 and len(t2i.benchmark.categories) == 8
    assert compose("experiment=geneval", "model.pretrained=/data/flux").model.spec.pretrained == "/data/flux"


def test_default_is_the_toy_world_run(compose):
    cfg = compose()
    assert cfg.model.name == "toyworld" and cfg.benchmark.name == "toyworld" and cfg.logger.mode == "offline"
    assert list(cfg.stages) == ["calibrate", "quantize", "generate", "evaluate"] and cfg.calib.name == "toyworld"
    smoke = compose("experiment=smoke")
    assert smoke.model.name == "tiny" and smoke.benchmark.name == "smoke"


def test_slurm_launcher_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == 1 and launcher.max_num_timeout > 0


@pytest.mark.parametrize(("override", "missing"), [("model=flux_pro", "model/flux_pro"),
                                                   ("experiment=genevall", "experiment/genevall")])
def test_unknown_choice_is_a_clear_error(override, missing, tmp_path):
    proc = run_cli(override, "logger=none", env={"FLUX158_OUTPUT_DIR": str(tmp_path)})
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert f"Could not find '{missing}'" in text
    group = missing.split("/")[0]
    assert "Available options" in text and ("tiny" in text if group == "model" else "geneval" in text)
    assert not (Path(tmp_path) / "generate").exists()


QUANTS = sorted(p.stem for p in (REPO / "configs" / "quant").glob("*.yaml"))


@pytest.mark.parametrize("quant", QUANTS)
def test_quant_configs_instantiate(compose, quant):
    from flux158.quant import TernaryConfig

    cfg = compose(f"quant={quant}")
    assert cfg.quant.name == quant
    if quant == "bf16":
        assert cfg.quant.get("config") is None
    else:
        config = instantiate(cfg.quant.config)
        assert isinstance(config, TernaryConfig)
        if quant == "distill":  # CFG-aware stage 2 at the experiment's own guidance scale
            assert config.distill.e2e_guidance == cfg.sampler.guidance_scale


def test_quantized_pipeline_has_ternary_block_linears(compose):
    import torch

    from flux158.quant import TernaryLinear, block_linear_names

    pipe = pipeline.load(compose("experiment=smoke", "quant=twn"), torch.device("cpu"))
    ternary = [n for n, m in pipe.transformer.named_modules() if isinstance(m, TernaryLinear)]
    assert len(ternary) == 2 * 14 + 2 * 6 and block_linear_names(pipe.transformer) == []


@pytest.mark.parametrize("override", ["benchmark.per_tag=-3", "benchmark.per_tag=0", "benchmark.samples_per_prompt=0"])
def test_counts_below_one_are_refused_before_any_prompt_is_made(compose, override):
    """Issue 37: `benchmark.per_tag=-3` used to run with zero prompts and exit 0."""
    from flux158.errors import ConfigError
    from flux158.experiments import resolve

    with pytest.raises(ConfigError, match=override.split("=")[0]):
        resolve.prompts(compose(override))
