"""Model specs and loading: hub/local FLUX.1, random-weight FLUX of real shapes, the tiny offline FLUX, the toy-world
model."""

from flux158.models.hub import HubFluxSpec
from flux158.models.loading import ModelSpec, load_pipeline, parse_dtype
from flux158.models.random import RandomFluxSpec
from flux158.models.tiny import TinyFluxSpec
from flux158.toyworld.pipeline import ToyWorldSource

__all__ = ["HubFluxSpec", "ModelSpec", "RandomFluxSpec", "TinyFluxSpec", "ToyWorldSource", "load_pipeline",
           "parse_dtype"]
