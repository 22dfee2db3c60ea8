"""Settings of the training commands: preset < YAML < flags into the config dataclass, and the output check.

Shared by `train embedder` and `train reasoner`, so neither command module imports the other for them.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._checks import FOLDER, Output, check_outputs


def build_config(cls: type, args: argparse.Namespace, fields: tuple[str, ...], presets: dict) -> Any:
    """preset < YAML < flags, validated by the dataclass itself."""
    import dataclasses

    import yaml

    values: dict[str, Any] = {}
    if getattr(args, "preset", None):
        values.update(presets[args.preset])
    if getattr(args, "config", None):
        try:
            loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{args.config}: cannot read YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{args.config}: expected a mapping of field names to values")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ConfigError(f"{args.config}: unknown field(s) {unknown}")
        loaded = typed_yaml_values(cls, _renamed_fields(loaded, args.config), args.config)
        if isinstance(loaded.get("mixture"), str) and not Path(loaded["mixture"]).is_absolute():
            # a mixture named in a config file is looked for next to that file first, then from the current
            # directory (where configs written for older versions pointed)
            beside = Path(args.config).parent / loaded["mixture"]
            if beside.is_file() or not Path(loaded["mixture"]).is_file():
                loaded["mixture"] = str(beside)
        values.update(loaded)
    for name in fields:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    values["output_dir"] = args.out
    for name, value in values.items():  # flags too: argparse's float() accepts nan and inf
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
    mixture = values.get("mixture")
    if isinstance(mixture, str) and not Path(mixture).is_file():  # found now, not after the model has loaded
        raise ConfigError(f"mixture file not found: {mixture}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid training settings: {exc}") from None


# transformers 5 renamed these; a config written for the old name must still win over a preset's new one
RENAMED_FIELDS = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


def _renamed_fields(loaded: dict, source: str) -> dict:
    out = dict(loaded)
    for old, new in RENAMED_FIELDS.items():
        if old not in out:
            continue
        if new in out and out[new] != out[old]:
            raise ConfigError(f"{source}: {old!r} and {new!r} (its new name) disagree; keep only {new!r}")
        out[new] = out.pop(old)
        print(f"note: {source}: {old!r} is read as {new!r} (its name since transformers 5)", file=sys.stderr)
    return out


def typed_yaml_values(cls: type, loaded: dict, source: str) -> dict:
    """YAML values checked against the config fields' types. PyYAML reads `1e-4` (no dot) as a string and
    `'no'` stays a string; these are turned into numbers where a number is meant, or named as errors, before
    any model is loaded."""
    import typing

    hints = typing.get_type_hints(cls)
    checked = {}
    for name, value in loaded.items():
        allowed = _plain_types(hints.get(name))
        if value is None or allowed is None or (type(value) in allowed):
            checked[name] = value
        elif float in allowed and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                checked[name] = float(value)
            except ValueError:
                raise ConfigError(f"{source}: field {name!r} must be a number, got {value!r}") from None
        elif int in allowed and isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            checked[name] = int(value)
        else:
            wanted = " or ".join(t.__name__ for t in sorted(allowed, key=lambda t: t.__name__))
            hint = " (write true or false)" if bool in allowed else ""
            raise ConfigError(f"{source}: field {name!r} must be {wanted}{hint}, got {value!r}")
    for name, value in checked.items():
        if isinstance(value, float) and not math.isfinite(value):  # YAML's .nan / .inf, or 'nan'
            raise ConfigError(f"{source}: field {name!r} must be a finite number, got {loaded[name]!r}")
    return checked


def _plain_types(hint: Any) -> set[type] | None:
    """{int}, {float, int}, {bool}, {str} for simple (optional) field types; None for anything else."""
    import types
    import typing

    args = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    plain = {a for a in args if a is not type(None)}
    if not plain or not plain <= {int, float, bool, str}:
        return None
    return plain | ({int} if float in plain else set())


def check_out(args: argparse.Namespace, *inputs: tuple[str, str | None]) -> None:
    """OUT is the run's own folder (checkpoints in it are rotated, OUT/final is replaced): it must hold no
    input and lie in none."""
    check_outputs([Output("--out", Path(args.out), FOLDER)], inputs)
