"""Errors a user can cause: each ends in one clear message, never a deep traceback."""


class RaygptError(Exception):
    """Base for problems in what a user gave us (a path, a config, a checkpoint, a request)."""


class ConfigError(RaygptError):
    """A config file or override is invalid; the message names the key and the source."""


class CheckpointError(RaygptError):
    """A checkpoint is missing, corrupt, or of a kind we cannot read."""


class TokenizerError(RaygptError):
    """A tokenizer cannot be built (unknown name, BPE ranks not provisioned)."""


class RequestError(RaygptError, ValueError):
    """A generation request the engine cannot run; `field` names the setting at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
