"""The documentation site builds with `mkdocs build --strict`: a broken link, a missing page, a
docstring the API reference cannot parse or a public module without a reference page fails."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NEEDED = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_docs_packages() -> list[str]:
    missing = []
    for name in NEEDED:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def test_every_public_module_has_an_api_page():
    """Each public module is a section of its subpackage's page (docs/api/<subpackage>.md)."""
    package = REPO_ROOT / "keras_transfer"
    modules = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        if parts[-1] == "__init__" or any(part.startswith("_") for part in parts):
            continue
        if parts[1] != "apps":  # the command's modules are documented by its guide
            modules.append(parts)
    assert len(modules) > 30, modules  # never pass vacuously
    nav = (REPO_ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = []
    for parts in modules:
        page_name = parts[1]  # keras_transfer.<subpackage or module>
        page = REPO_ROOT / "docs" / "api" / f"{page_name}.md"
        dotted = ".".join(parts)
        if not page.is_file() or f"::: {dotted}\n" not in page.read_text(encoding="utf-8"):
            missing.append(f"docs/api/{page_name}.md (with '::: {dotted}')")
        elif f"api/{page_name}.md" not in nav:
            missing.append(f"api/{page_name}.md in the nav of mkdocs.yml")
    assert not missing, "public modules without an API reference section: " + ", ".join(missing)


def test_mkdocs_build_strict(tmp_path):
    missing = _missing_docs_packages()
    if missing:
        pytest.fail(
            f"the documentation tools are not installed ({', '.join(missing)}): "
            'pip install -e ".[dev]" (or ".[docs]")'
        )
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO_ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    # The API reference was generated from the docstrings, not left empty.
    heads = (site / "api" / "heads" / "index.html").read_text(encoding="utf-8")
    assert 'id="keras_transfer.heads.classifier.create_classifier"' in heads
    assert "global average pooling" in heads  # text of ClassificationHead's docstring
    # benchmarks/README.md is included into the site, not copied.
    benchmarks = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    first_heading = (
        (REPO_ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8").splitlines()[0]
    )
    assert first_heading.lstrip("# ").strip() in benchmarks
