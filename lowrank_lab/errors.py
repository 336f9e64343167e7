"""One error type for bad configuration or input: the entry point prints it as one line and exits non-zero."""

from __future__ import annotations

from typing import Any


class LabError(ValueError):
    """A bad config value or input, raised where it is first seen, before any heavy work."""


def bad_value(key: str, value: Any, allowed: str) -> LabError:
    """Build the one-line error: `<key>=<value>: <what is allowed>`."""
    return LabError(f"{key}={value!r}: {allowed}")
