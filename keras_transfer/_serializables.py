"""Registering the package's serialisable classes with Keras, without importing Keras early.

A `.keras` file names each class by its registered name (`"keras_transfer>ClassificationHead"`),
which Keras finds only if the module defining the class has been imported. `import
keras_transfer` imports neither Keras nor TensorFlow (seconds of start-up, and the command's
`--help` must answer at once), so registration is tied to Keras itself:

- when Keras is already imported, `import keras_transfer` registers at once;
- otherwise the first import of `keras` that follows registers, right after Keras has loaded
  (a one-shot import hook, `importlib`'s public finder/loader protocol);
- and the first use of any `kt.<name>` registers too.

So `import keras_transfer` then `keras.saving.load_model(path)` works in either order.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

__all__ = [
    "OPTIONAL_SERIALIZABLE_MODULES",
    "SERIALIZABLE_MODULES",
    "register_all",
    "register_optional",
    "register_when_keras_is_imported",
]

# Every module that defines a class or function registered with
# `keras.saving.register_keras_serializable` (tests/test_serialization.py checks the list).
SERIALIZABLE_MODULES = (
    "keras_transfer.backbones.preprocessing",
    "keras_transfer.backbones.hub.layer",
    "keras_transfer.backbones.keras_hub.layers",
    "keras_transfer.heads.losses",
    "keras_transfer.heads.classification",
    "keras_transfer.heads.zero_shot",
    "keras_transfer.heads.multi_task",
    "keras_transfer.heads.classifier",
    "keras_transfer.optimizers.layerwise",
    "keras_transfer.optimizers.schedules",
    "keras_transfer.peft.l2sp",
    "keras_transfer.distillation.distiller",
    "keras_transfer.training.callbacks.unfreezing",
    "keras_transfer.adaptation.layers",
    "keras_transfer.adaptation.losses",
    "keras_transfer.adaptation.schedules",
    "keras_transfer.adaptation.model",
    "keras_transfer.few_shot.prototype_head",
)

# Modules whose registered classes need an optional package: {module: package}. Importing
# Keras must not import that package (KerasHub takes seconds), so `register_all` leaves them
# out; `register_optional` imports them, and `saving.load_model` calls it for a file that
# names one of them.
OPTIONAL_SERIALIZABLE_MODULES = {"keras_transfer.apps.zero_shot_text": "keras_hub"}

_registered = False


def register_all() -> None:
    """Imports every module in `SERIALIZABLE_MODULES` (once), which registers its classes;
    deferred while a module of the package is still being imported."""
    global _registered
    if _registered or _inside_package_import():
        return
    _registered = True
    for name in SERIALIZABLE_MODULES:
        importlib.import_module(name)


def register_optional(mentioned_in: str | None = None) -> None:
    """Imports each module of `OPTIONAL_SERIALIZABLE_MODULES` whose package is installed;
    with `mentioned_in` (the text of a `.keras` file's config), only those it names."""
    for name, package in OPTIONAL_SERIALIZABLE_MODULES.items():
        if mentioned_in is not None and f'"{name}"' not in mentioned_in:
            continue
        if importlib.util.find_spec(package) is not None:
            importlib.import_module(name)


def _inside_package_import() -> bool:
    """Whether a module of this package is being imported right now. Registering then
    would import modules that import the one still loading (a circular import); the import
    that started it registers when it is done (`keras_transfer.__getattr__`,
    `saving.load_model`, or the next import of Keras)."""
    for name, module in list(sys.modules.items()):
        # `__spec__._initializing` is what importlib itself reads to tell a partially
        # initialised module (importlib._bootstrap); no public API says it.
        spec = getattr(module, "__spec__", None)
        if name.startswith("keras_transfer.") and getattr(spec, "_initializing", False):
            return True
    return False


class _KerasLoader(importlib.abc.Loader):
    """Keras' own loader, and registration once Keras has loaded."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def __getattr__(self, name: str):
        # is_package, get_code, get_resource_reader...: Keras' loader answers.
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        register_all()


class _KerasImportHook(importlib.abc.MetaPathFinder):
    """Finds `keras` with the other finders, once, and wraps its loader."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _KerasLoader(spec.loader)
        return spec


def register_when_keras_is_imported() -> None:
    """Registers now if Keras is loaded, else when it is (see the module's docstring)."""
    if "keras" in sys.modules:
        register_all()
        return
    if not any(isinstance(finder, _KerasImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _KerasImportHook())
