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
