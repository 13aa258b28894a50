"""User-facing errors: raised for bad input or missing resources, shown without a stack trace by `run.py`."""


class Flux158Error(RuntimeError):
    """Base class for errors whose message alone tells the user what to do."""


class ModelUnavailableError(Flux158Error):
    """Model weights cannot be loaded (offline, gated repository, missing local path)."""


class PromptDataError(Flux158Error):
    """A pinned benchmark file is missing, unreachable or fails its sha256 check."""


class LayoutError(Flux158Error):
    """Prompts or sample indices cannot be written in the requested image layout."""


class ConfigError(Flux158Error, ValueError):
    """A setting is out of range or inconsistent (e.g. `shard.index` >= `shard.count`)."""


class ShardsPending(Flux158Error):
    """A job of a sharded array (`shard.count > 1`) reached a stage that needs every shard's work, which other jobs
    are still doing: the job that completes it goes on, and this one ends successfully here."""
