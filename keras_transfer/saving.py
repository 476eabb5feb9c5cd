"""Saving a trained model for inference, and loading any model this package wrote.

`save_model` writes a `.keras` file atomically (never a truncated or NaN model at the
path) and, by default, without the optimizer: its slots (Adam keeps two per weight) and
its exponential-moving-average copies (`use_ema`) roughly triple the file of a model that
only has to predict, and a deployable model never needs them. The resumable training
state is a separate thing, kept by `fit_two_phase(backup_dir=...)` (Keras'
`BackupAndRestore`).

`load_model` is `keras.saving.load_model` after importing every module of this package
that registers serialisable classes (`_serializables.register_all`), so it works in a
process that has not used them yet. A class of another package that is not registered is
one line naming it, the file and the fix (`UnknownSavedClassError`), instead of Keras'
message, which repeats the file's whole configuration (86,000 characters for a
MobileNet classifier).

```python
kt.save_model(model, "model.keras")  # 17 MB MobileNet: 17 MB, not 51 MB
model = kt.load_model("model.keras")  # safe_mode=True; uncompiled, ready to predict
```
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import keras

from keras_transfer import _serializables
from keras_transfer.utils import files
from keras_transfer.utils import reliability

__all__ = ["UnknownSavedClassError", "load_model", "save_model"]

# Keras' messages for a class (or function) it cannot find: not registered, or its module
# (keras_hub, ...) not importable.
_UNKNOWN_OBJECT = re.compile(
    r"Could not (?:locate|deserialize) (class|function) '([^']+)'(?: because its parent "
    r"module (\S+) cannot be imported)?"
)


class UnknownSavedClassError(TypeError):
    """A `.keras` file names a class no imported module registers; the message names the
    class, the file and the fix, and `__cause__` is Keras' own error."""


@contextlib.contextmanager
def _without_optimizer(model: keras.Model) -> Iterator[None]:
    """The model as Keras saves an uncompiled one (no optimizer variables, no compile
    config), restored afterwards even if saving fails."""
    if not getattr(model, "compiled", False):
        yield
        return
    optimizer = model.optimizer
    model.optimizer = None
    model.compiled = False
    try:
        yield
    finally:
        model.optimizer = optimizer
        model.compiled = True


def save_model(
    model: keras.Model,
    path: str | os.PathLike,
    include_optimizer: bool = False,
    *,
    check_finite: bool = True,
    **kwargs: Any,
) -> None:
    """Saves `model` to a `.keras` file, by default for inference only.

    The file is written beside `path` and renamed onto it, so a killed process leaves the
    previous file intact; NaN or infinite weights are refused (`NonFiniteWeightsError`).
    A path ending in `.weights.h5` gets the weights alone, written the same way.

    Args:
        model: the model to save.
        path: a `.keras` path, or `.weights.h5` for the weights only.
        include_optimizer: also save the optimizer's state (its slots and EMA copies) and
            the compile settings, to continue training from the file. Without it the file
            reloads uncompiled, which is all `predict` and `export` need.
        check_finite: refuse to save NaN/inf weights.
        **kwargs: passed to `model.save` (`model.save_weights` for `.weights.h5`).

    Example:

    ```python
    kt.save_model(model, "model.keras")
    kt.save_model(model, "checkpoint.keras", include_optimizer=True)
    ```
    """
    path = os.fspath(path)
    if not path.endswith((".keras", ".weights.h5")):
        raise ValueError(
            f"save_model writes a .keras file (or .weights.h5 for the weights only), got "
            f"{path!r}: end the path in .keras."
        )
    if check_finite:
        reliability.check_finite_weights(model)
    if path.endswith(".weights.h5"):
        reliability.write_atomically(path, lambda target: model.save_weights(target, **kwargs))
        return
    saving = contextlib.nullcontext() if include_optimizer else _without_optimizer(model)
    with saving:
        reliability.write_atomically(path, lambda target: model.save(target, **kwargs))


def load_model(path: str | os.PathLike, **kwargs: Any) -> keras.Model:
    """`keras.saving.load_model(path, **kwargs)` with every class of this package registered.

    Args:
        path: a `.keras` file (for example from `save_model` or `keras-transfer train`).
        **kwargs: passed to `keras.saving.load_model`; `safe_mode` defaults to True (a
            file with Python lambdas is refused; models with TF Hub backbones load in
            safe mode too).

    Example:

    ```python
    model = kt.load_model("runs/ants_vs_bees/model.keras")
    probabilities = model.predict(images)  # raw 0-255 RGB images
    ```
    """
    path = os.fspath(path)
    if not files.exists(path):
        raise FileNotFoundError(f"No model at {path!r}.")
    kwargs.setdefault("safe_mode", True)
    _serializables.register_all()
    # A file naming a class of an optional package's module (KerasHub tasks) imports it.
    _serializables.register_optional(_saved_config(path))
    try:
        return keras.saving.load_model(path, **kwargs)
    except TypeError as error:
        message = _unknown_class_message(error, path)
        if message is None:
            raise
        raise UnknownSavedClassError(message) from error


def _saved_config(path: str) -> str:
    """The text of a `.keras` file's `config.json` (a zip member), or `""` if it cannot be
    read (then no optional module is imported, and Keras reports what it cannot read)."""
    try:
        with files.open_file(path, "rb") as f, zipfile.ZipFile(f) as archive:
            return archive.read("config.json").decode("utf-8", errors="replace")
    except (OSError, KeyError, zipfile.BadZipFile):
        return ""


def _unknown_class_message(error: BaseException, path: str) -> str | None:
    """One line for Keras' error about an unknown class (it may be the cause or context
    of the error Keras raises for the enclosing model), else `None`."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        match = _UNKNOWN_OBJECT.search(text)
        if match:
            break
        error = error.__cause__ or error.__context__
    else:
        return None
    kind, name, missing_module = match.groups()
    config = _object_config(text[match.end() :])
    registered = config.get("registered_name") or name
    module = missing_module or config.get("module")
    if missing_module:
        package = missing_module.split(".")[0]
        return (
            f"{path!r} uses the {kind} {name!r} of the module {missing_module!r}, which cannot "
            f"be imported: pip install {package.replace('_', '-')}, then load it again."
        )
    where = f" (the package registered it as {registered!r}"
    where += f", module {module!r})" if module else ")"
    return (
        f"{path!r} uses the {kind} {name!r}{where}, which no imported module registers: "
        f"import the module that defines it (with @keras.saving.register_keras_serializable) "
        f"before loading, pip install its package if it is missing, or pass "
        f"custom_objects={{{registered!r}: {name}}}."
    )


def _object_config(rest: str) -> dict[str, Any]:
    """The `Full object config: {...}` of Keras' message, if it parses."""
    _, marker, after = rest.partition("Full object config: ")
    if not marker or not after.strip():
        return {}
    try:
        config = ast.literal_eval(after.splitlines()[0])
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return {}
    return config if isinstance(config, dict) else {}
