"""Configuration: pydantic models filled from YAML files plus ``key.sub=value`` overrides.

One config object flows from the command line to the engine.  Every engine declares its own
pydantic model (``extra="forbid"``, so a typo in a YAML key is an error, not a silent default) and
builds it with :func:`build_config`.  Named configs ship inside the package (``vasomim/configs/``,
found with :mod:`importlib.resources`, so they are there after a plain ``pip install``):
``pretrain/tiny_cpu`` names ``vasomim/configs/pretrain/tiny_cpu.yaml``; any other YAML file is given
by its path.

A YAML file may start with ``_base_: other.yaml`` (relative to itself) to inherit and override, which
is how the ablations are written as small override files.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict

T = TypeVar("T", bound=BaseModel)

# setuptools installs a package as a plain folder (never zipped), so the resource is a real path
CONFIG_DIR = Path(str(resources.files("vasomim") / "configs"))


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def resolve_config_path(name: str | Path) -> Path:
    """A path as given, or a name looked up in the shipped configs (``.yaml`` optional)."""
    p = Path(name)
    if p.is_file():
        return p
    # "configs/pretrain/x.yaml" (the layout before the configs moved into the package) still works
    rel = Path(*p.parts[1:]) if p.parts[:1] == ("configs",) else p
    for cand in (CONFIG_DIR / rel, CONFIG_DIR / f"{rel}.yaml"):  # not with_suffix: "ratio_0.5"
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{name}: config not found (looked for the file and under {CONFIG_DIR})")


def deep_merge(base: dict, update: dict) -> dict:
    """Recursively merge ``update`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml(path: str | Path) -> dict:
    """Load a YAML config, following ``_base_`` inheritance."""
    path = resolve_config_path(path)
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping at the top level")
    base = data.pop("_base_", None)
    if base:
        data = deep_merge(load_yaml(path.parent / base), data)
    return data


def parse_overrides(overrides: Iterable[str]) -> dict:
    """Turn ``["a.b=3", "c=[1,2]"]`` into a nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def build_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (), **values: Any) -> T:
    """Build ``cls`` from defaults, then a YAML file, then keyword values, then ``key=value`` overrides."""
    data: dict = load_yaml(path) if path else {}
    data = deep_merge(data, values)
    data = deep_merge(data, parse_overrides(overrides))
    return cls.model_validate(data)


def config_to_dict(cfg: BaseModel) -> dict:
    """Plain JSON-able data (what goes into checkpoints and logs)."""
    return json.loads(cfg.model_dump_json())


def config_hash(*parts: Any) -> str:
    """A short stable hash of configs / plain data, used to key cached stages."""
    def plain(x: Any) -> Any:
        return config_to_dict(x) if isinstance(x, BaseModel) else x

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def validation_summary(exc: Any) -> str:
    """A pydantic ``ValidationError`` as one line: ``key.sub: message; other: message``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
