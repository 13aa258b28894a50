"""FLUX model specs and loading: the hub/local FLUX.1 models and the tiny offline one."""

from flux158.models.hub import HubFluxSpec
from flux158.models.loading import ModelSpec, load_pipeline, parse_dtype
from flux158.models.tiny import TinyFluxSpec

__all__ = ["HubFluxSpec", "ModelSpec", "TinyFluxSpec", "load_pipeline", "parse_dtype"]
