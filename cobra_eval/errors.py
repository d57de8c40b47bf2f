"""The one exception hierarchy: every error a user can cause is a CobraEvalError."""

from __future__ import annotations


class CobraEvalError(Exception):
    """An error the user can fix; the CLI prints its message and exits non-zero."""


class ConfigError(CobraEvalError):
    """A flag, option or combination of them is invalid."""


class ConfigMismatchError(CobraEvalError):
    """A run or file was made with a different semantic configuration."""

    def __init__(self, what: str, differences: list[tuple[str, object, object]], hint: str = ""):
        self.differences = differences
        lines = [f"{what} was made with a different configuration:"]
        for key, theirs, ours in differences:
            lines.append(f"  {key}: {_show(theirs)} (stored) != {_show(ours)} (now)")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class CheckpointFileError(CobraEvalError):
    """A checkpoint or results JSON file is unreadable, truncated or of the wrong shape."""


class DatasetError(CobraEvalError):
    """A dataset cannot be loaded or does not fit the request."""


class StoreError(CobraEvalError):
    """The results database cannot be opened, upgraded or written."""


class BackendError(CobraEvalError):
    """A model backend cannot be found or loaded."""


def _show(value: object) -> str:
    import json

    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
