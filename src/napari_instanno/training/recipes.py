"""Training recipes: the YAML config files under ``configs/``, with command-line overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InstannoError


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The YAML recipe with ``key.sub=value`` overrides (values parsed as YAML).

    Raises ``InstannoError`` when the file is missing, not YAML or has no ``data`` section.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InstannoError(f"config {path} not found")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InstannoError(f"config {path} is not valid YAML: {err}") from err
    if not isinstance(cfg, dict) or "data" not in cfg:
        raise InstannoError(f"config {path} needs a 'data' section")
    for item in overrides or []:
        key, _, value = item.partition("=")
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return cfg
