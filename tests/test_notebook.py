"""Runs examples/colab_tpu.ipynb top to bottom on CPU with tiny settings, so it never rots."""

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (dev extra)")
nbclient = pytest.importorskip("nbclient", reason="needs nbclient (dev extra)")
pytest.importorskip("ipykernel", reason="needs ipykernel (dev extra)")

from conftest import write_image_folder  # noqa: E402

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "examples" / "colab_tpu.ipynb"


def test_notebook_runs_on_cpu(tmp_path, monkeypatch):
    data = tmp_path / "images"
    write_image_folder(data, {"daisy": 6, "tulips": 6})
    settings = {
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
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()

    outputs = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "No TPU" in outputs
    assert "_DefaultDistributionStrategy: 1 replica(s), policy float32" in outputs
    assert "feature_extraction {" in outputs and "fine_tune {" in outputs
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        ["confusion_matrix.png", "labels.txt", "model.keras", "training_curves.png"]
    )
