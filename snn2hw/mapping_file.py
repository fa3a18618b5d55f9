"""Reading a YAML, TOML or JSON file whose top level is a mapping (configs, energy profiles)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConfigError


def read_mapping_file(path: str | Path, what: str) -> dict[str, Any]:
    """The file's top-level mapping; ConfigError naming the file for a missing,
    unparsable or non-mapping file. ``what`` says what the mapping holds."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: file not found; expected a YAML/TOML/JSON mapping of {what}")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:
        raise ConfigError(f"{p}: cannot parse ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of {what} at the top level")
    return data
