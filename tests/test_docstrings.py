"""Docstring examples are plain fenced ```python blocks: nothing runs them as doctests, so a
`>>>` prompt would promise an output that no test checks."""

import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_transfer"


def test_no_doctest_prompts_in_the_package():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10, f"the package moved? found {files}"  # never pass vacuously
    prompts = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if line.lstrip().startswith(">>>")
    ]
    assert not prompts, (
        "Docstring examples must be fenced ```python blocks (outputs as `# -> value` "
        "comments), not `>>>` doctests that never run:\n" + "\n".join(prompts)
    )
