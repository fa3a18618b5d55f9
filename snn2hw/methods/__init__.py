"""Registry of training methods: one module each, one line here.

A method's options are the fields of its dataclass; ``option_flags`` turns them
into command-line flags (a field's ``metadata`` may give ``help``, ``choices``
and a ``flag`` name), so a new method needs no CLI edit.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from ..core.surrogate import DEFAULT_SURROGATE
from ..errors import ConfigError
from ..registry import lookup
from .asgl import ASGL
from .base import MethodContext, TrainingMethod
from .cpng import CPNG
from .dspike import DspikeMethod
from .gsg import GSG
from .psg import PSG
from .sg import FixedSurrogate

METHODS: dict[str, type] = {
    FixedSurrogate.name: FixedSurrogate,
    CPNG.name: CPNG,
    PSG.name: PSG,
    ASGL.name: ASGL,
    GSG.name: GSG,
    DspikeMethod.name: DspikeMethod,
}


def make_method(name: str, options: dict | None = None) -> TrainingMethod:
    """Build a registered method with its options (dataclass fields)."""
    cls = lookup(METHODS, name, "method")
    options = dict(options or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"method {name!r} has no option(s) {unknown}; it takes {sorted(known)}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"method {name!r}: bad option value ({exc})") from None


def resolve_surrogate(method: str, requested: str | None) -> str:
    """The surrogate shape a run of ``method`` trains with, given the config's ``requested``
    shape (None: not given). A method that installs its own shape (its ``surrogates``)
    uses that one, and refuses another: it would be ignored and the run mislabelled.
    A method without the attribute trains with the config's shape.
    """
    own = tuple(getattr(lookup(METHODS, method, "method"), "surrogates", ()))
    if not own:
        return DEFAULT_SURROGATE if requested is None else requested
    if requested is not None and requested not in own:
        raise ConfigError(f"method {method!r} trains with its own surrogate shape "
                          f"({' / '.join(own)}), not {requested!r}: drop --surrogate "
                          f"(or use --method sg to train with {requested!r})")
    return own[0] if requested is None else requested


def option_flags() -> dict[str, tuple[str, dict]]:
    """``option name -> (flag, argparse kwargs)`` over every registered method's fields.

    The flag is ``--<name with dashes>`` unless the field's metadata names one;
    booleans get ``--x/--no-x``, tuples take a list of ints. Methods sharing an
    option name share its flag (their types must agree).
    """
    out: dict[str, tuple[str, dict]] = {}
    for method, cls in METHODS.items():
        for f in fields(cls):
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
            help_text = f"{f.metadata.get('help', method + ': ' + f.name)} [{method}]"
            if isinstance(default, bool):
                kw: dict = dict(action=argparse.BooleanOptionalAction)
            elif isinstance(default, tuple):
                kw = dict(type=int, nargs="*")
            else:
                kw = dict(type=type(default))
            if "choices" in f.metadata:
                kw["choices"] = list(f.metadata["choices"])
            elif not isinstance(default, bool):
                kw["metavar"] = {int: "N", float: "X", str: "S"}.get(kw["type"], "V")
            if f.name in out:
                old_flag, old = out[f.name]
                if old_flag != flag or old.get("type") != kw.get("type"):
                    raise TypeError(f"method option {f.name!r} differs between methods ({old_flag} vs {flag})")
                old["help"] += "; " + help_text
            else:
                out[f.name] = (flag, dict(kw, help=help_text))
    return out


__all__ = ["METHODS", "MethodContext", "TrainingMethod", "make_method", "option_flags",
           "resolve_surrogate"]
