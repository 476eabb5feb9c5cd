"""Shared test set-up: quiet TF logs, a tiny-model budget, and the real-assets fixture."""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The example binaries' `_lib` modules live beside them in examples/.
sys.path.insert(0, str(REPO_ROOT / "examples"))


def assets_dir() -> pathlib.Path | None:
    """The real weights/datasets folder: $KERAS_TRANSFER_ASSETS, else ../shared/assets."""
    configured = os.environ.get("KERAS_TRANSFER_ASSETS")
    candidate = pathlib.Path(configured) if configured else REPO_ROOT.parent / "shared" / "assets"
    return candidate if (candidate / "README.md").is_file() else None


@pytest.fixture
def assets() -> pathlib.Path:
    """The real assets folder; skips the test (with the reason) when it is not present."""
    path = assets_dir()
    if path is None:
        pytest.skip(
            "real assets not found: set KERAS_TRANSFER_ASSETS or place them at ../shared/assets"
        )
    return path


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts from the default dtype policy and a fixed seed."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


def write_image_folder(root, class_counts, size=(40, 48), seed=0):
    """Writes a small learnable image folder: one subfolder per class, JPEGs whose colour
    depends on the class. Returns the written paths."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)
    paths = []
    for label, (name, count) in enumerate(class_counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.uniform(0, 80, (*size, 3))
            image[..., label % 3] += 150
            encoded = tf.io.encode_jpeg(tf.constant(image.clip(0, 255).astype("uint8")))
            path = folder / f"{name}_{i}.jpg"
            path.write_bytes(encoded.numpy())
            paths.append(path)
    return paths


@pytest.fixture
def image_folder(tmp_path):
    """A factory: image_folder({"cats": 6, "dogs": 6}, subdir="train") -> folder path."""

    def make(class_counts, subdir="", size=(40, 48), seed=0):
        root = tmp_path / "images" / subdir if subdir else tmp_path / "images"
        write_image_folder(root, class_counts, size=size, seed=seed)
        return root

    return make
