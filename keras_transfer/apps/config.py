"""The `--config` files of `keras-transfer train` / `train-text` (and the example binaries):
YAML or JSON, checked against a settings dataclass.

A file holds the settings of a run (the `transfer_config` of a recipe), either at the top
level or under a `transfer_config:` key. `build_config` maps it onto the application's
dataclass of settings: unknown keys and values of the wrong type are errors that name the key, the
file and the fix; recipe names (`source_model`, `backbone_lr`, `lr_decay_per_layer`,
`scheduler`, `early_stopping_patience`, `unfreeze`, `epochs: {head, fine_tune}`) are
accepted as aliases of the dataclass fields. Command-line flags given explicitly override
the file.

```python
values = read_config_file("examples/configs/ants_vs_bees.yaml")
config = build_config(image_config.Config, values, overrides={"head_epochs": 3})
```
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["ConfigError", "TRANSFER_CONFIG_ALIASES", "build_config", "read_config_file"]

# Recipe key -> dataclass field.
TRANSFER_CONFIG_ALIASES = {
    "source_model": "backbone",
    "backbone_lr": "fine_tune_lr",
    "lr_decay_per_layer": "lr_decay",
    "scheduler": "lr_schedule",
    "early_stopping_patience": "patience",
    "unfreeze": "unfreeze_blocks",
}


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message says how to fix it.
    The command exits with 2 on it, as on any other usage error."""

    exit_code = 2


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The settings in a `.yaml` / `.yml` / `.json` file, unwrapped from `transfer_config:`
    if present."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"Config file {path!r} does not exist.")
    extension = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if extension in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as error:
                raise ConfigError(
                    f"Reading {path!r} needs PyYAML (pip install pyyaml), or write the config "
                    "as JSON."
                ) from error
            values = yaml.safe_load(text)
        elif extension == ".json":
            values = json.loads(text)
        else:
            raise ConfigError(f"Config file {path!r} must end in .yaml, .yml or .json.")
    except (ValueError, ImportError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"Cannot parse {path!r}: {error}") from error
    except Exception as error:  # yaml.YAMLError
        raise ConfigError(f"Cannot parse {path!r}: {error}") from error
    if values is None:
        return {}
    if isinstance(values, Mapping) and set(values) == {"transfer_config"}:
        values = values["transfer_config"]
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path!r} must hold a mapping of settings, got {type(values).__name__}.")
    return dict(values)


def _expand(values: Mapping[str, Any], aliases: Mapping[str, str], where: str) -> dict[str, Any]:
    """`values` with aliases and `epochs: {head, fine_tune}` as field names; two keys that
    name the same field (`backbone_lr` and `fine_tune_lr`) are an error, not a silent pick."""
    expanded: dict[str, Any] = {}
    given_as: dict[str, str] = {}

    def put(field: str, value: Any, key: str) -> None:
        if field in given_as:
            raise ConfigError(
                f"{where} sets {field} twice, as {given_as[field]!r} and as {key!r}: keep one."
            )
        given_as[field] = key
        expanded[field] = value

    for key, value in values.items():
        if key == "epochs":
            if not isinstance(value, Mapping) or not set(value) <= {"head", "fine_tune"}:
                raise ConfigError(
                    f"`epochs` in {where} must be a mapping like {{head: 10, fine_tune: 5}}, "
                    f"got {value!r} (or set head_epochs / fine_tune_epochs)."
                )
            for phase, epochs in value.items():
                put(f"{phase}_epochs", epochs, f"epochs.{phase}")
            continue
        put(aliases.get(key, key), value, key)
    return expanded


def _coerce(name: str, annotation: Any, value: Any, where: str) -> Any:
    """`value` as the field's type (ints for floats, numeric strings from YAML like '1e-3')."""
    options = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str | int | float) and not isinstance(value, bool):
            return value if isinstance(value, str) else str(value)
    if float in options and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-3 as a string
        except ValueError:
            pass
    wanted = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"`{name}` in {where} must be {wanted}, got {value!r}.")


def build_config(
    cls: type,
    values: Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | None = None,
    aliases: Mapping[str, str] = TRANSFER_CONFIG_ALIASES,
    source: str = "the config",
):
    """An instance of the dataclass `cls` from file `values`, then `overrides` on top.

    Raises:
        ConfigError: for unknown keys (with the closest known key) and wrong types. The
            dataclass's `__post_init__` checks allowed values.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    expanded = _expand(values, aliases, source)
    unknown = [key for key in expanded if key not in fields]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(fields) + list(aliases), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"Unknown setting(s) in {source}: {', '.join(hints)}. Known settings: "
            f"{', '.join(sorted(fields))}."
        )
    hints = typing.get_type_hints(cls)
    settings = {key: _coerce(key, hints[key], value, source) for key, value in expanded.items()}
    settings.update(overrides or {})
    try:
        return cls(**settings)
    except TypeError as error:  # a required field missing
        raise ConfigError(f"Incomplete configuration from {source}: {error}") from error
