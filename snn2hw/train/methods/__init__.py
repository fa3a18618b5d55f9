"""Registry of training methods: one module each, one line here."""

from __future__ import annotations

from dataclasses import fields

from ...errors import ConfigError
from .base import MethodContext, TrainingMethod
from .cpng import CPNG
from .psg import PSG
from .sg import FixedSurrogate

METHODS: dict[str, type] = {
    FixedSurrogate.name: FixedSurrogate,
    CPNG.name: CPNG,
    PSG.name: PSG,
}


def make_method(name: str, options: dict | None = None) -> TrainingMethod:
    """Build a registered method with its options (dataclass fields)."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None
    options = dict(options or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"method {name!r} has no option(s) {unknown}; it takes {sorted(known)}")
    return cls(**options)


__all__ = ["METHODS", "MethodContext", "TrainingMethod", "make_method"]
