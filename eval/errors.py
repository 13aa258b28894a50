"""Errors shared by the evaluators."""


class IncompleteFolderError(ValueError):
    """An image folder misses prompts or samples; scoring it would bias the benchmark's averages."""
