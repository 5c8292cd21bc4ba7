"""The run's one typed configuration: YAML file + `--set key.sub=value` overrides, validated by pydantic.

A `RunConfig` holds each stage's settings (`peso.settings`) and the methods to compare, each entry with its
own typed settings (`methods: [single, {name: peso, lam: 1.0e+5, label: peso-1e5}]`). It flows through a
run and is saved beside its results.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator

from peso.errors import PesoError
from peso.settings import (
    DataConfig,
    DecodeConfig,
    MethodSettings,
    ModelConfig,
    TrainConfig,
    _distinct,
    _Section,
)
from peso.strategies import method_settings

# sections of older configs, now settings of their methods: the one-line error shows the new form
MOVED = {
    "peso": "methods: [{name: peso, lam: 1000.0}, {name: peso, lam: 1.0e+5, label: peso-1e5}, ...]",
    "baselines": "methods: [{name: l2, lam: 1.0}, {name: ewc, lam: 100.0, targets: 2048}, "
    "{name: sdlora-all, magnitude_init: 1.0}, {name: inflora, energy: 0.97}, ...]",
    "sasrec": "methods: [{name: sasrec-finetune, hidden: 64, epochs: 2}, ...]",
    "graph": "methods: [{name: lightgcn-finetune, dim: 64, epochs: 20}, {name: pisa, alpha: 0.5}, ...]",
}


class RunConfig(_Section):
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    methods: list[SerializeAsAny[MethodSettings]] = Field(
        default_factory=lambda: [method_settings(n) for n in ("peso", "single", "frozen", "popular")],
        min_length=1,
        description="methods to run: a registered name, or a mapping {name: ..., label: ..., <its settings>}",
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto",
        description="torch CPU threads: auto = one fewer than this process's share of the cores (at least 1), "
        "so that another process on the machine does not stall the run (benchmarks/threads.py); "
        "null = torch's own choice",
    )

    _distinct_seeds = field_validator("seeds")(lambda v: _distinct(v))

    @model_validator(mode="before")
    @classmethod
    def _moved_sections(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            for section, example in MOVED.items():
                if section in raw:
                    raise ValueError(
                        f"the '{section}:' section is gone: each method takes its own settings, e.g. {example}"
                    )
        return raw

    @field_validator("methods", mode="before")
    @classmethod
    def _typed_methods(cls, entries: Any) -> Any:
        if not isinstance(entries, list):
            return entries
        out = [
            e if isinstance(e, MethodSettings) else method_settings(e, f"methods[{k}]")
            for k, e in enumerate(entries)
        ]
        keys = [m.key for m in out]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"{twice} listed twice: give each entry of a method its own label")
        return out

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _set_path(tree: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise PesoError(
                where, f"'{dotted}': '{key}' is not a section", "set a leaf such as train.lr=1e-3"
            )
        node = child
    node[keys[-1]] = value


def _loc(parts: tuple) -> str:
    """A field's dotted name, without the tags pydantic adds for a union's members ('constrained-int')."""
    return ".".join(str(p) for p in parts if not re.search(r"[-\[(']", str(p)))


def _format_validation(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = _loc(first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown setting"
    if loc == "methods" and msg.startswith("methods"):  # the entry names itself
        loc = ""
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc + ': ' if loc else ''}{msg}{extra}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply `key.sub=value` overrides (values parsed as YAML), validate."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PesoError(str(path), "config file not found", "give the path of a YAML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PesoError(
            str(path), f"cannot be read as a text file ({e.__class__.__name__})", "give a YAML file"
        ) from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise PesoError(str(path), f"not valid YAML{at}", "fix the YAML syntax") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PesoError(str(path), "top level must be a mapping of sections", "see configs/quickstart.yaml")
    _resolve_paths(raw, path.parent)  # a config file's relative paths are relative to the file
    set_keys = set()
    for item in overrides or []:
        if "=" not in item:
            raise PesoError("--set", f"'{item}' is not key=value", "write e.g. --set train.lr=1e-3")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise PesoError(
                "--set", f"{key}: value '{value}' is not valid YAML", "quote it or fix it"
            ) from None
        _set_path(raw, key.strip(), parsed, "--set")
        set_keys.add(key.strip())
    _resolve_paths(raw, Path.cwd())  # what is still relative came from --set: relative to the working folder
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        loc = _loc(e.errors()[0]["loc"])
        from_set = any(
            loc == k
            or loc.startswith(k + ".")
            or k.startswith(loc + ".")
            or (not loc and k.split(".")[0] in MOVED)
            for k in set_keys
        )
        raise PesoError(
            "--set" if from_set else str(path),
            _format_validation(e),
            "move those settings into `methods:`, as configs/quickstart.yaml does"
            if "section is gone" in str(e)
            else "correct the value; see configs/quickstart.yaml",
        ) from None


def with_added_methods(cfg: RunConfig, text: str) -> RunConfig:
    """`cfg` with the YAML list `text` of method entries appended to its methods (`--add-methods`)."""
    fix = "give a YAML list of method entries, e.g. --add-methods '[{name: peso, lam: 10.0}]'"
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError:
        raise PesoError("--add-methods", f"'{text}' is not valid YAML", fix) from None
    if not isinstance(entries, list) or not entries:
        raise PesoError("--add-methods", f"'{text}' is not a non-empty list", fix)
    raw = cfg.dump()
    raw["methods"] = raw["methods"] + entries
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise PesoError(
            "--add-methods", _format_validation(e), "correct the entry; `peso methods` lists them"
        ) from None


def _resolve_paths(raw: dict, base: Path) -> None:
    """Make data.path, and model.name where it names an existing folder, absolute against `base`: the saved
    config then works from any working folder. A model.name that is no folder there (a hub id, an alias)
    stays as it is."""
    data, model = raw.get("data"), raw.get("model")
    if isinstance(data, dict) and isinstance(data.get("path"), str) and data["path"]:
        p = Path(data["path"]).expanduser()
        data["path"] = p.as_posix() if p.is_absolute() else os.path.abspath(base / p)
    if isinstance(model, dict) and isinstance(model.get("name"), str) and model["name"]:
        p = Path(model["name"]).expanduser()
        if not p.is_absolute() and (base / p).is_dir():
            model["name"] = os.path.abspath(base / p)
