"""The shape of the code, read from the source (AST) without importing TensorFlow: module and
function sizes, tests that use only public names and do not import each other, an import graph
without cycles between subpackages and without dangling imports, and (in two subprocesses) an
`import keras_transfer` that stays cheap and quiet and still loads `.keras` files."""

import ast
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "keras_transfer"
TESTS_DIR = REPO_ROOT / "tests"
PACKAGE = "keras_transfer"

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

# The one private module tests may import: the designated home of Keras/TF internals.
ALLOWED_PRIVATE_IMPORTS = {"test_keras_compat.py": {"keras_transfer._keras_compat"}}


# --- reading the source -------------------------------------------------------------------


def module_name(path: pathlib.Path) -> str:
    """`keras_transfer/heads/classification.py` -> `keras_transfer.heads.classification`."""
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_sources() -> dict[str, pathlib.Path]:
    """Every module of the package by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def parse(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf8"), filename=str(path))


def files_of_tests() -> list[pathlib.Path]:
    """The Python files of tests/ (test modules, conftest and helper modules)."""
    return sorted(TESTS_DIR.glob("*.py"))


def relative(path: pathlib.Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def by_place(entry: str) -> tuple:
    """Sort key of `path:line ...` entries: by path, then by line number."""
    path, _, rest = entry.partition(":")
    line = re.match(r"\d+", rest)
    return (path, int(line.group()) if line else 0, rest)


def report(title: str, offenders: list[str]) -> str:
    offenders = sorted(offenders, key=by_place)
    return f"{len(offenders)} {title}:\n  " + "\n  ".join(offenders)


# --- sizes --------------------------------------------------------------------------------


def test_no_module_is_over_600_lines():
    offenders = []
    for path in package_sources().values():
        lines = len(path.read_text(encoding="utf8").splitlines())
        if lines > MAX_MODULE_LINES:
            offenders.append(f"{relative(path)}: {lines} lines")
    assert not offenders, report(f"modules over {MAX_MODULE_LINES} lines", offenders)


def test_no_function_is_over_80_lines():
    # From `def` to the function's last line, docstring included (decorators are not).
    offenders = []
    for path in package_sources().values():
        for node in ast.walk(parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    offenders.append(f"{relative(path)}:{node.lineno} {node.name}: {length} lines")
    assert not offenders, report(f"functions over {MAX_FUNCTION_LINES} lines", offenders)


# --- tests use public names only ------------------------------------------------------------


def lazy_module_names() -> dict[str, str]:
    """`kt.<name>` attributes that are modules (`_MODULES` of keras_transfer/__init__.py)."""
    for node in parse(PACKAGE_DIR / "__init__.py").body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_MODULES" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return {}


class ModuleBindings:
    """Which names of a test file are bound to modules of the package, and how a dotted
    expression (`kt.data.folders`) resolves to one."""

    def __init__(self, modules: set[str], lazy: dict[str, str]):
        self.modules = modules
        self.lazy = lazy
        self.names: dict[str, str] = {}

    def bind_import(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != PACKAGE:
                    continue
                if alias.asname:
                    self.names[alias.asname] = alias.name
                else:
                    self.names[PACKAGE] = PACKAGE
        elif node.module and node.level == 0 and node.module.split(".")[0] == PACKAGE:
            for alias in node.names:
                submodule = self.submodule(node.module, alias.name)
                if submodule:
                    self.names[alias.asname or alias.name] = submodule

    def submodule(self, module: str, attribute: str) -> str | None:
        if f"{module}.{attribute}" in self.modules:
            return f"{module}.{attribute}"
        if module == PACKAGE and attribute in self.lazy:
            return self.lazy[attribute]
        return None

    def resolve(self, node: ast.expr) -> str | None:
        """The package module `node` evaluates to, if it is one."""
        if isinstance(node, ast.Name):
            return self.names.get(node.id)
        if isinstance(node, ast.Attribute):
            owner = self.resolve(node.value)
            return self.submodule(owner, node.attr) if owner else None
        return None


def private_imports(path: pathlib.Path, tree: ast.Module) -> list[str]:
    """`from keras_transfer.x import _name` and `import keras_transfer._x` in a test file."""
    allowed = ALLOWED_PRIVATE_IMPORTS.get(path.name, set())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if is_private(alias.name) and target not in allowed:
                    found.append(
                        f"{relative(path)}:{node.lineno} from {node.module} import {alias.name}"
                    )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if (
                    parts[0] == PACKAGE
                    and any(map(is_private, parts))
                    and alias.name not in allowed
                ):
                    found.append(f"{relative(path)}:{node.lineno} import {alias.name}")
    return found


def private_attributes(path: pathlib.Path, tree: ast.Module, bindings: ModuleBindings) -> list[str]:
    """`mod._name`, `setattr`/`getattr`/`monkeypatch.setattr(mod, "_name", ...)` where `mod` is
    a package module, and calls given a dotted name such as `"keras_transfer.x._name"`."""
    allowed = ALLOWED_PRIVATE_IMPORTS.get(path.name, set())
    found = []
    for node in ast.walk(tree):
        owner, name, how = None, None, ""
        if isinstance(node, ast.Attribute):
            owner, name = bindings.resolve(node.value), node.attr
        elif isinstance(node, ast.Call) and node.args:
            first, text = node.args[0], node.args[1] if len(node.args) > 1 else None
            if isinstance(text, ast.Constant) and isinstance(text.value, str):
                owner, name, how = bindings.resolve(first), text.value, " (by name)"
            elif isinstance(first, ast.Constant) and isinstance(first.value, str):
                if DOTTED_MODULE.match(first.value):  # monkeypatch.setattr("kt.x._y", ...)
                    owner, _, name = first.value.rpartition(".")
                    how = " (by dotted name)"
        if owner and name and is_private(name) and f"{owner}.{name}" not in allowed:
            found.append(f"{relative(path)}:{node.lineno} {owner}.{name}{how}")
    return found


def test_tests_use_only_public_names_of_the_package():
    modules = set(package_sources())
    lazy = lazy_module_names()
    offenders = []
    for path in files_of_tests():
        tree = parse(path)
        bindings = ModuleBindings(modules, lazy)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                bindings.bind_import(node)
        offenders += private_imports(path, tree)
        offenders += private_attributes(path, tree, bindings)
    assert not offenders, report("uses of private names of keras_transfer modules", offenders)


# Also inside the source of scripts that tests run in subprocesses (string literals).
TEST_MODULE_IMPORT = re.compile(r"^\s*(?:from\s+(test_\w+)\s+import|import\s+(test_\w+))", re.M)


def test_test_files_do_not_import_each_other():
    test_modules = {p.stem for p in TESTS_DIR.glob("test_*.py")}
    offenders = []
    for path in files_of_tests():
        source = path.read_text(encoding="utf8")
        for match in TEST_MODULE_IMPORT.finditer(source):
            imported = match.group(1) or match.group(2)
            if imported in test_modules:
                line = source.count("\n", 0, match.start()) + 1
                offenders.append(f"{relative(path)}:{line} imports {imported}")
    assert not offenders, report(
        "imports of a test file (share it through conftest.py or tests/helpers.py)", offenders
    )


# --- the import graph -----------------------------------------------------------------------


def imported_modules(name: str, path: pathlib.Path, tree: ast.Module):
    """(line, imported module, imported names or None) for each package import of a module,
    at any depth (imports inside functions too); relative imports made absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            if module.split(".")[0] == PACKAGE:
                yield node.lineno, module, [alias.name for alias in node.names]


def top_level_names(tree: ast.Module) -> set[str] | None:
    """The names a module binds at its top level; None when it answers any name (a module
    `__getattr__` or a star import)."""
    names = set()
    statements = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return None
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(alias.name == "*" for alias in node.names):
                return None
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                statements += getattr(node, field, [])
        elif isinstance(node, ast.ExceptHandler):
            statements += node.body
    return names


def dangling_imports(sources: dict[str, pathlib.Path], trees: dict[str, ast.Module]) -> list[str]:
    defined = {name: top_level_names(tree) for name, tree in trees.items()}
    found = []
    for name, path in sources.items():
        for line, module, names in imported_modules(name, path, trees[name]):
            where = f"{relative(path)}:{line}"
            if module not in sources:
                found.append(f"{where} imports {module}, which does not exist")
                continue
            for imported in names or []:
                known = defined[module]
                submodule = f"{module}.{imported}" in sources
                if not submodule and known is not None and imported not in known:
                    found.append(
                        f"{where} imports {imported} from {module}, which has no such name"
                    )
    return found


DOTTED_MODULE = re.compile(rf"^{PACKAGE}(\.\w+)+$")


def dangling_module_strings(sources, trees) -> list[str]:
    """Module names written as strings (the lazy `_EXPORTS`/`_MODULES` maps, the serializable
    modules, the command's sub-commands) that name no module."""
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if DOTTED_MODULE.match(node.value) and node.value not in sources:
                    found.append(f"{relative(sources[name])}:{node.lineno} names {node.value!r}")
    return found


def test_every_package_import_names_an_existing_module_and_name():
    sources = package_sources()
    trees = {name: parse(path) for name, path in sources.items()}
    offenders = dangling_imports(sources, trees) + dangling_module_strings(sources, trees)
    assert not offenders, report("imports of what does not exist", offenders)


def test_every_public_name_of_keras_transfer_is_defined_where_exports_says():
    sources = package_sources()
    tree = parse(PACKAGE_DIR / "__init__.py")
    exports = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)
    )
    offenders = []
    for public, module in sorted(exports.items()):
        known = top_level_names(parse(sources[module])) if module in sources else set()
        if known is not None and public not in known:
            offenders.append(f"kt.{public} -> {module}, which does not define it")
    assert not offenders, report("stale entries of _EXPORTS", offenders)


def component(module: str) -> str:
    """The part of the package a module belongs to: its subpackage (`keras_transfer.heads`) or,
    for a top-level module, the module itself (`keras_transfer.saving`)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of nodes that reach each other (cycles), largest first."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups, key=len, reverse=True)


def test_subpackages_import_each_other_without_cycles():
    # The root keras_transfer/__init__.py is the lazy surface over everything: left out.
    sources = package_sources()
    graph: dict[str, set[str]] = {}
    evidence: dict[tuple[str, str], str] = {}
    for name, path in sources.items():
        if name == PACKAGE:
            continue
        for line, module, names in imported_modules(name, path, parse(path)):
            # `from keras_transfer import saving` imports the module keras_transfer.saving.
            submodules = [f"{module}.{n}" for n in names or [] if f"{module}.{n}" in sources]
            for target in map(component, submodules or [module]):
                if target != component(name):
                    graph.setdefault(component(name), set()).add(target)
                    evidence.setdefault((component(name), target), f"{relative(path)}:{line}")
    offenders = []
    for group in strongly_connected(graph):
        edges = [
            f"{a} -> {b} ({evidence[a, b]})" for a in group for b in group if (a, b) in evidence
        ]
        offenders.append(" <-> ".join(group) + ":\n    " + "\n    ".join(edges))
    assert not offenders, report("import cycles between parts of the package", offenders)


# --- import keras_transfer, in a fresh process ----------------------------------------------

FRESH_IMPORT = textwrap.dedent(
    """
    import json, os, sys

    class ArgvSpy(list):
        # Records every read of sys.argv: importing the package must not look at it.
        reads = []

        def __getitem__(self, item):
            self.reads.append(repr(item))
            return super().__getitem__(item)

        def __iter__(self):
            self.reads.append("iter")
            return super().__iter__()

        def __len__(self):
            self.reads.append("len")
            return super().__len__()

    sys.argv = ArgvSpy(sys.argv)
    stderr = sys.stderr
    print("IMPORT-BEGIN", file=sys.stderr, flush=True)
    import keras_transfer
    print("IMPORT-END", file=sys.stderr, flush=True)
    facts = {
        "tensorflow": "tensorflow" in sys.modules,
        "keras": "keras" in sys.modules,
        "argv_reads": list(ArgvSpy.reads),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL"),
        "stderr_replaced": sys.stderr is not stderr,
    }
    sys.argv = list(sys.argv)

    import keras
    import numpy as np
    model = keras.saving.load_model("tests/fixtures/classifier_before_layout.keras")
    saved = np.load("tests/fixtures/classifier_before_layout.npz")
    predictions = np.asarray(model.predict(saved["images"], verbose=0))
    # Within float32 rounding, not bit for bit: the fixture's predictions were computed on
    # another CPU, whose kernels (AVX-512 or AVX2, oneDNN or not) sum in another order.
    facts["same_predictions"] = bool(
        np.allclose(predictions, saved["predictions"], rtol=1e-4, atol=1e-4)
    )
    facts["largest_difference"] = float(np.max(np.abs(predictions - saved["predictions"])))
    print("FACTS " + json.dumps(facts))
    """
)


def fresh_environment() -> dict[str, str]:
    """This environment with the package on the path and without the variables the package
    could set or read on import (so that a change is visible)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_CONFIG")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def facts_of(stdout: str) -> dict:
    line = [x for x in stdout.splitlines() if x.startswith("FACTS ")][-1]
    return json.loads(line[len("FACTS ") :])


def test_import_is_cheap_and_quiet_and_old_keras_files_still_load():
    """`import keras_transfer` (with `--verbose` in argv) imports neither TensorFlow nor Keras,
    reads no argv, sets no TF log level and writes nothing to stderr; `import keras` after it
    then loads a `.keras` file saved before the subpackages, with the same predictions."""
    completed = subprocess.run(
        [sys.executable, "-c", FRESH_IMPORT, "--verbose"],
        cwd=REPO_ROOT,
        env=fresh_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    facts = facts_of(completed.stdout)
    during_import = completed.stderr.split("IMPORT-BEGIN\n", 1)[1].split("IMPORT-END", 1)[0]
    assert during_import == "", f"import keras_transfer wrote to stderr: {during_import!r}"
    assert facts["tensorflow"] is False, "import keras_transfer imported tensorflow"
    assert facts["keras"] is False, "import keras_transfer imported keras"
    assert facts["argv_reads"] == [], f"import keras_transfer read sys.argv: {facts['argv_reads']}"
    assert facts["TF_CPP_MIN_LOG_LEVEL"] is None, "import keras_transfer set TF_CPP_MIN_LOG_LEVEL"
    assert facts["stderr_replaced"] is False, "import keras_transfer replaced sys.stderr"
    assert facts["same_predictions"], (
        f"the reloaded model predicts differently (by up to {facts['largest_difference']})"
    )


def test_command_help_answers_without_tensorflow():
    # -X importtime lists every module imported, on stderr: only the names are used.
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keras_transfer", "--help"],
        cwd=REPO_ROOT,
        env=fresh_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "usage: keras-transfer" in completed.stdout
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in completed.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert "keras_transfer.apps.command" in imported  # the listing is what it seems
    heavy = sorted(m for m in imported if m.split(".")[0] in ("tensorflow", "keras"))
    assert not heavy, f"keras-transfer --help imported {heavy[:10]}"
