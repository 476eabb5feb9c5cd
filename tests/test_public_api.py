"""Every public module states its public surface in `__all__`, and `keras_transfer.__all__`
re-exports only names that the module owning them declares public. The API reference pages
(mkdocstrings) show a module's `__all__`, so a name missing there is missing from the docs."""

import ast
import importlib
import inspect
import pathlib
import types

import pytest

import keras_transfer as kt

PACKAGE = pathlib.Path(kt.__file__).resolve().parent


def _public_module_names() -> list[str]:
    names = [
        f"keras_transfer.{path.stem}"
        for path in sorted(PACKAGE.glob("*.py"))
        if not path.stem.startswith("_")
    ]
    names += [
        f"keras_transfer.apps.{path.stem}"
        for path in sorted((PACKAGE / "apps").glob("*.py"))
        if not path.stem.startswith("_")
    ]
    return names


PUBLIC_MODULES = _public_module_names()


def test_public_modules_are_found():
    # Never pass vacuously: the package layout moved if these are missing.
    assert "keras_transfer.training" in PUBLIC_MODULES
    assert "keras_transfer.apps.image_classifier" in PUBLIC_MODULES
    assert "keras_transfer._keras_compat" not in PUBLIC_MODULES
    assert "keras_transfer.apps._cli" not in PUBLIC_MODULES


# The binaries' modules define absl flags when imported, and two of them define the same flag
# names, so one process cannot import them all: they are read, not imported.
FLAG_MODULES = [name for name in PUBLIC_MODULES if name.endswith("_cli")]


def _source_path(module_name: str) -> pathlib.Path:
    return PACKAGE.parent.joinpath(*module_name.split(".")).with_suffix(".py")


@pytest.mark.parametrize("module_name", FLAG_MODULES)
def test_flag_module_declares_its_own_public_surface(module_name):
    tree = ast.parse(_source_path(module_name).read_text(encoding="utf-8"))
    defined, exported = set(), None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            targets = {target.id for target in node.targets if isinstance(target, ast.Name)}
            defined |= targets
            if "__all__" in targets:
                exported = ast.literal_eval(node.value)
    assert isinstance(exported, list), f"{module_name} has no `__all__` list."
    missing = sorted(set(exported) - defined)
    assert not missing, f"{module_name}.__all__ names what the module does not define: {missing}"


@pytest.mark.parametrize(
    "module_name", [name for name in PUBLIC_MODULES if name not in FLAG_MODULES]
)
def test_module_declares_an_existing_public_surface(module_name):
    module = importlib.import_module(module_name)
    assert isinstance(getattr(module, "__all__", None), list), (
        f"{module_name} has no `__all__`: add a sorted list of its public names after the imports."
    )
    exported = module.__all__
    assert len(exported) == len(set(exported)), f"{module_name}.__all__ repeats a name"
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names what the module lacks: {missing}"
    private = [name for name in exported if name.startswith("_")]
    assert not private, f"{module_name}.__all__ lists private names: {private}"
    # A class or function is public in the module that defines it, not in one importing it
    # (nor is an imported module such as `keras`).
    borrowed = []
    for name in exported:
        obj = getattr(module, name)
        if inspect.ismodule(obj):
            borrowed.append(f"{name} (the module {obj.__name__})")
        elif (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ != module_name:
            borrowed.append(f"{name} (from {obj.__module__})")
    assert not borrowed, f"{module_name}.__all__ lists names it only imports: {borrowed}"


def test_top_level_names_are_public_in_their_own_module():
    unowned = []
    for name in kt.__all__:
        if name == "__version__":
            continue
        obj = getattr(kt, name)
        if isinstance(obj, types.ModuleType):
            assert obj.__name__ == f"keras_transfer.{name}", name
            continue
        owner = importlib.import_module(obj.__module__)
        if name not in getattr(owner, "__all__", ()):
            unowned.append(f"{name} (add it to {obj.__module__}.__all__)")
    assert len(kt.__all__) > 50, kt.__all__  # never pass vacuously
    assert not unowned, "re-exported by keras_transfer but not public where defined: " + (
        ", ".join(unowned)
    )
