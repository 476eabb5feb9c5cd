"""Runs examples/colab_tpu.ipynb top to bottom on CPU with tiny settings, as Colab would: in a
fresh virtual environment that sees this interpreter's packages as preinstalled (Colab's
TensorFlow and Keras), with the notebook's own install cell installing a wheel built from this
checkout. So the install cell never rots either."""

import json
import os
import pathlib
import re
import shutil
import site
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (dev extra)")
nbclient = pytest.importorskip("nbclient", reason="needs nbclient (dev extra)")
pytest.importorskip("ipykernel", reason="needs ipykernel (dev extra)")

import tensorflow as tf  # noqa: E402
from conftest import write_image_folder  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "examples" / "colab_tpu.ipynb"


def _build_wheel(tmp_path: pathlib.Path) -> pathlib.Path:
    # From a copy of the sources, so the build leaves no build/ or egg-info in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(
        REPO_ROOT / "keras_transfer",
        source / "keras_transfer",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
        check=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("keras_transfer-*.whl")
    return wheel


def _colab_like_venv(tmp_path: pathlib.Path) -> pathlib.Path:
    """A fresh venv whose 'system' packages are this interpreter's (TensorFlow, Keras, Jupyter)."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300
    )
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if sys.prefix != sys.base_prefix:
        # This interpreter is itself a venv: `--system-site-packages` only reaches the base
        # interpreter, so its site-packages are added after the fresh venv's own, as Colab's
        # system packages come after what the notebook installs.
        paths = [p for p in site.getsitepackages() if os.path.isdir(p)]
        pathlib.Path(purelib, "zz_preinstalled.pth").write_text("\n".join(paths) + "\n")
    return python


def _venv_dist(python: pathlib.Path, name: str) -> tuple[str, str]:
    """(version, folder) of the distribution `name` as the venv's interpreter sees it."""
    code = (
        "import importlib.metadata as m, sys; d = m.distribution(sys.argv[1]); "
        "print(d.version); print(d.locate_file(''))"
    )
    out = subprocess.run(
        [str(python), "-c", code, name], check=True, capture_output=True, text=True
    ).stdout.split("\n")
    return out[0], os.path.realpath(out[1])


def test_notebook_agrees_with_pyproject_on_the_tensorflow_range():
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (pinned,) = re.findall(r'"tensorflow(>=[^"]+)"', pyproject)
    notebook = NOTEBOOK.read_text(encoding="utf-8")
    assert f'SUPPORTED_TENSORFLOW = \\"{pinned}\\"' in notebook


@pytest.fixture(scope="module")
def colab_like(tmp_path_factory):
    """(wheel, venv python): built once for both backends' runs."""
    tmp_path = tmp_path_factory.mktemp("colab")
    return _build_wheel(tmp_path), _colab_like_venv(tmp_path)


@pytest.mark.parametrize(
    ("backend", "strategy"),
    [
        # TensorFlow is the notebook's CPU default and the command's main job already runs in
        # CI; JAX (what a Colab TPU VM runs) is the case to keep in the fast suite (about 30 s).
        pytest.param("tensorflow", "_DefaultDistributionStrategy", marks=pytest.mark.slow),
        ("jax", "KerasDistribution"),
    ],
)
def test_notebook_installs_the_wheel_and_runs_on_cpu(
    tmp_path, monkeypatch, colab_like, backend, strategy
):
    wheel, python = colab_like
    venv = python.parents[1]
    # The kernel runs the fresh venv's interpreter.
    kernel_dir = tmp_path / "jupyter" / "kernels" / "colab-like"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "colab-like venv",
                "language": "python",
            }
        )
    )
    data = tmp_path / "images"
    write_image_folder(data, {"daisy": 6, "tulips": 6})
    settings = {
        "JUPYTER_PATH": str(tmp_path / "jupyter"),
        "KT_INSTALL_FROM": "wheel",
        "KT_WHEEL": str(wheel),
        "KT_DATASET": str(data),
        "KT_BACKBONE": "mobilenet",
        "KT_WEIGHTS": "none",
        "KT_IMAGE_SIZE": "32",
        "KT_BATCH_SIZE": "4",
        "KT_HEAD_EPOCHS": "1",
        "KT_FINE_TUNE_EPOCHS": "1",
        "KT_MODEL_DIR": str(tmp_path / "out"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
        # As set before the notebook starts: on a CPU runtime the notebook's own default is
        # TensorFlow, and JAX is what a TPU VM gets.
        "KERAS_BACKEND": backend,
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    # Only the installed wheel may provide keras_transfer, not this checkout.
    monkeypatch.delenv("PYTHONPATH", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="colab-like",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()

    outputs = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    # The install cell installed the wheel into the fresh venv, and kept TensorFlow.
    assert f"keras_transfer installed from wheel; TensorFlow {tf.__version__} kept." in outputs
    show = subprocess.run(
        [str(python), "-m", "pip", "show", "keras-transfer"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    location = re.search(r"^Location: (.+)$", show, re.M).group(1).strip()
    assert os.path.realpath(location).startswith(os.path.realpath(venv)), show
    assert "Editable project location" not in show, show
    version, tf_location = _venv_dist(python, "tensorflow")
    assert version == tf.__version__
    assert not tf_location.startswith(os.path.realpath(venv)), "TensorFlow was reinstalled"
    # ...and the kernel imported it from there.
    assert f"({os.path.join(location, 'keras_transfer')})" in outputs, outputs
    # The notebook's run.
    assert f"Keras backend: {backend} (TPU VM: False" in outputs
    assert "No TPU" in outputs
    assert f"on {backend}, CPU: {strategy}, 1 replica(s), policy float32" in outputs
    assert "feature_extraction {" in outputs and "fine_tune {" in outputs
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        ["confusion_matrix.png", "labels.txt", "model.keras", "training_curves.png"]
    )


def _strategy_cell() -> str:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return next(
        "".join(c["source"]) for c in cells if 'create_strategy("tpu")' in "".join(c["source"])
    )


@pytest.mark.parametrize(
    ("accelerator", "expected", "falls_back"),
    [("tpu", False, False), ("auto", True, False), ("auto", False, True)],
)
def test_notebook_never_trains_on_the_cpu_when_a_tpu_was_expected(
    monkeypatch, accelerator, expected, falls_back
):
    import keras_transfer as kt

    create = kt.distribute.create_strategy

    def no_tpu(name="default", tpu=None):
        if name == "tpu":
            raise RuntimeError("No TPU found (local: this machine has no TPU chips).")
        return create(name, tpu)

    monkeypatch.setattr(kt.distribute, "create_strategy", no_tpu)
    monkeypatch.setattr(kt.distribute, "tpu_expected", lambda: expected)
    namespace = {"os": os, "ACCELERATOR": accelerator}
    if falls_back:
        exec(_strategy_cell(), namespace)
        assert not kt.distribute.is_tpu(namespace["strategy"])
    else:
        with pytest.raises(RuntimeError, match="A TPU was expected"):
            exec(_strategy_cell(), namespace)
