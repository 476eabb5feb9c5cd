"""benchmarks/domain_adaptation.py: the target shifts of the photo tasks."""

import numpy as np
import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("domain_adaptation")


def test_dim_camera_darkens_tints_blue_and_adds_noise(bench):
    images = np.full((2, 32, 32, 3), 200.0, dtype="float32")
    shifted = bench.dim_camera(images, np.random.default_rng(0))
    # A flat image stays flat under the blur: each channel is 200 x 0.6 x its gain, plus
    # noise of sigma 12 (the means over 2,048 pixels are within 1.5 of it).
    np.testing.assert_allclose(
        shifted.mean(axis=(0, 1, 2)), 200 * 0.6 * np.array([0.85, 0.95, 1.15]), atol=1.5
    )
    assert shifted.std(axis=(0, 1, 2)) == pytest.approx([12, 12, 12], rel=0.1)


def test_dim_camera_blurs_an_edge(bench):
    images = np.zeros((1, 16, 16, 3), dtype="float32")
    images[:, :, 8:] = 250.0
    shifted = bench.dim_camera(images, np.random.default_rng(0))
    noiseless = shifted.mean(axis=(0, 1, 3))  # mean over rows and channels: noise averages out
    # Sharp before; after a sigma-1 blur the columns next to the edge are in between.
    assert noiseless[5] < 10 and noiseless[10] > 140
    assert 15 < noiseless[7] < noiseless[8] < 135


def test_each_photo_task_has_its_shift(bench):
    assert bench.SHIFTS == {"photo_shift": bench.night_camera, "camera_shift": bench.dim_camera}
    assert bench.DEFAULTS["camera_shift"] == bench.DEFAULTS["photo_shift"]
