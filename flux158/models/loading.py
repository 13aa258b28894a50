"""Load a pipeline from a model spec (hub/local FLUX, the tiny offline FLUX, or the toy-world model) onto a device."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel

from flux158.errors import ModelUnavailableError
from flux158.models.hub import HubFluxSpec, resolve_pretrained
from flux158.models.random import RandomFluxSpec, build_random_pipeline
from flux158.models.tiny import TinyFluxSpec, ensure_tiny_pipeline
from flux158.quant.checkpoint import is_quantized_checkpoint, load_quantized
from flux158.toyworld.pipeline import ToyWorldPipeline, ToyWorldSource

log = logging.getLogger(__name__)

ModelSpec = HubFluxSpec | RandomFluxSpec | TinyFluxSpec | ToyWorldSource


def parse_dtype(name: str) -> torch.dtype:
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(dtypes)}")
    return dtypes[name]


def pipeline_source(spec: ModelSpec, cache_dir: Path) -> str:
    """Where `FluxPipeline.from_pretrained` should read from; checks availability first (fails fast)."""
    if isinstance(spec, RandomFluxSpec):
        raise ValueError("a random-weight FLUX is built, not read: use load_pipeline")
    if isinstance(spec, TinyFluxSpec):
        return str(ensure_tiny_pipeline(spec, cache_dir))
    if isinstance(spec, ToyWorldSource):
        return str(spec.resolve())
    return resolve_pretrained(spec)


# What each choice of `components` leaves out.
COMPONENTS = {"all": (), "text": ("transformer", "vae"),
              "image": ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")}


def load_pipeline(
    spec: ModelSpec,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    cache_dir: Path,
    transformer_path: Path | None = None,
    cpu_offload: bool = False,
    components: str = "all",
    low_memory: bool = False,
) -> FluxPipeline | ToyWorldPipeline:
    """Load the pipeline, optionally replacing its transformer with one saved at `transformer_path`.

    Args:
        spec: which FLUX to load.
        device: where to run.
        dtype: weight/activation dtype (bfloat16 for FLUX.1-dev, as in the paper).
        cache_dir: where the tiny model is built and cached.
        transformer_path: a diffusers-format transformer directory (e.g. a quantized checkpoint) to use instead.
        cpu_offload: keep idle components on the CPU (`enable_model_cpu_offload`) for GPUs with little memory.
        components: "all"; "text" (text encoders and tokenizers only: encoding prompts); "image" (transformer,
            VAE and scheduler only: generating from stored prompt embeddings). The others are never loaded.
        low_memory: the least GPU memory, with diffusers' own mechanisms: the VAE decodes in tiles, one image at
            a time, and, when the text encoders are loaded, model CPU offload (each model on the GPU only while it
            runs, so T5 and the transformer are never there together).
    """
    if components not in COMPONENTS:
        raise ValueError(f"components must be one of {sorted(COMPONENTS)}, got {components!r}")
    if isinstance(spec, RandomFluxSpec):
        return _shrink(_load_random(spec, device, dtype, cache_dir, transformer_path, cpu_offload, components,
                                    low_memory), low_memory)
    if isinstance(spec, ToyWorldSource) and components != "all":
        raise ValueError("the toy world's pipeline loads whole (its prompts are short; nothing to gain)")
    source = pipeline_source(spec, cache_dir)
    kwargs = {"revision": spec.revision} if isinstance(spec, HubFluxSpec) and spec.revision else {}
    kwargs |= {name: None for name in COMPONENTS[components]}
    if components == "text":
        transformer_path = None
    try:
        if transformer_path is not None:
            kwargs["transformer"] = _transformer_override(transformer_path, dtype)
        pipeline_class = ToyWorldPipeline if isinstance(spec, ToyWorldSource) else FluxPipeline
        pipe = pipeline_class.from_pretrained(source, dtype=dtype, **kwargs)
    except OSError as e:  # missing or partially downloaded files
        raise ModelUnavailableError(f"Could not load the FLUX pipeline from {source}: {e}") from None
    _place(pipe, device, cpu_offload, low_memory)
    log.info("Loaded FLUX pipeline from %s (%s, %s%s) on %s", source, type(spec).__name__, dtype,
             "" if components == "all" else f", {components} components only", device)
    return _shrink(pipe, low_memory)


def _shrink(pipe, low_memory: bool):
    """Tiled, one-image-at-a-time VAE decoding (diffusers' own), when asked and the pipeline has a VAE."""
    if low_memory and getattr(pipe, "vae", None) is not None:
        pipe.vae.enable_tiling()
        pipe.vae.enable_slicing()
        log.info("low memory: the VAE decodes in tiles, one image at a time%s",
                 "" if getattr(pipe, "text_encoder_2", None) is None else "; each model is on the GPU only while it "
                 "runs (model offload)")
    return pipe


def _transformer_override(transformer_path: Path, dtype: torch.dtype) -> FluxTransformer2DModel:
    if is_quantized_checkpoint(transformer_path):
        return load_quantized(transformer_path)
    if not (Path(transformer_path) / "config.json").exists():
        raise ModelUnavailableError(f"transformer override {transformer_path} has neither a config.json nor a "
                                    "quantization.json")
    return FluxTransformer2DModel.from_pretrained(transformer_path, dtype=dtype)


def _place(pipe, device: str | torch.device, cpu_offload: bool, low_memory: bool = False) -> None:
    """On `device`; with `cpu_offload`, or `low_memory` while text encoders are loaded, diffusers' model offload:
    each model moves to the GPU when it runs and back when the next one starts."""
    pipe.set_progress_bar_config(disable=True)
    encoders = getattr(pipe, "text_encoder_2", None) is not None
    if torch.device(device).type == "cuda" and (cpu_offload or (low_memory and encoders)):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)


def _load_random(spec: RandomFluxSpec, device: str | torch.device, dtype: torch.dtype, cache_dir: Path,
                 transformer_path: Path | None, cpu_offload: bool, components: str = "all",
                 low_memory: bool = False) -> FluxPipeline:
    """Build the random-weight pipeline where it will run (the host when offloading), with an optional transformer
    checkpoint (a quantized one, made from this same random model) in place of the random transformer."""
    offloads = cpu_offload or (low_memory and components != "image")
    build_on = torch.device("cpu") if offloads else torch.device(device)
    transformer = None
    if transformer_path is not None and components != "text":
        try:
            transformer = _transformer_override(transformer_path, dtype).to(build_on)
        except OSError as e:
            raise ModelUnavailableError(f"Could not load the transformer {transformer_path}: {e}") from None
    pipe = build_random_pipeline(spec, build_on, dtype, cache_dir / "random-flux-tokenizers", transformer, components)
    _place(pipe, device, cpu_offload, low_memory)
    log.info("Built a random-weight FLUX (%s architecture, seed %d, %s) on %s: images are noise", spec.architecture,
             spec.seed, dtype, device)
    return pipe
