"""Looking a name up in one of the registries (surrogates, methods, targets, ...).

Every registry is a plain ``dict`` from name to entry; this is the one place
that turns a missing name into the error the user sees.
"""

from __future__ import annotations

from typing import Mapping, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError, ValueError):
    """A name no registry entry has. A ConfigError for the CLI (one line, exit 2) and a
    ValueError for callers of the library that catch bad values as such."""


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """``registry[name]``, or UnknownNameError naming ``what`` and the known names."""
    try:
        return registry[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name from a config file
        raise UnknownNameError(f"unknown {what} {name!r}; choose one of {sorted(registry)}") from None

