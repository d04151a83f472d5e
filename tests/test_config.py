"""Config loading: YAML inheritance, key=value overrides, strict keys, named configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

import vasomim
from vasomim.config import StrictModel, build_config, config_hash, parse_overrides, resolve_config_path


class Inner(StrictModel):
    a: int = 1
    b: list[float] = [0.5]


class Outer(StrictModel):
    name: str = "x"
    inner: Inner = Inner()


def test_overrides_are_parsed_as_yaml_values():
    assert parse_overrides(["inner.a=3", "inner.b=[1, 2]", "name=hello"]) == {
        "inner": {"a": 3, "b": [1, 2]}, "name": "hello"}
    with pytest.raises(ValueError, match="key.sub=value"):
        parse_overrides(["novalue"])


def test_base_inheritance_then_values_then_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ninner: {a: 2, b: [1.0]}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ninner: {a: 5}\n")
    cfg = build_config(Outer, tmp_path / "child.yaml", ["inner.b=[3]"], name="kw")
    assert cfg == Outer(name="kw", inner=Inner(a=5, b=[3.0]))
    with pytest.raises(ValidationError, match="typo"):
        build_config(Outer, None, ["inner.typo=1"])


def test_hash_is_stable_and_sensitive():
    assert config_hash(Outer()) == config_hash(Outer())
    assert config_hash(Outer()) != config_hash(Outer(inner=Inner(a=2)))


def test_named_configs_resolve_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = resolve_config_path("pretrain/tiny_cpu")
    b = resolve_config_path("configs/pretrain/tiny_cpu.yaml")  # the layout before the move
    assert a == b and a.is_file()
    assert resolve_config_path("pretrain/ratio_0.5").name == "ratio_0.5.yaml"  # a dot in the name
    assert a.parent.parent.parent == Path(vasomim.__file__).parent  # inside the package
    with pytest.raises(FileNotFoundError, match="config not found"):
        resolve_config_path("pretrain/nope")
