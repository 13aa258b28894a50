"""Errors shared by the evaluators."""


class IncompleteFolderError(ValueError):
    """An image folder misses prompts or samples; scoring it would bias the benchmark's averages."""


class WeightsUnavailableError(RuntimeError):
    """An evaluator's weights are not cached and cannot be downloaded, or their hash does not match."""


class BadInputError(ValueError):
    """An input file of an evaluator cannot be read: an image that does not decode, a metadata file that is not
    what its layout promises."""
