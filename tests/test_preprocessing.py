"""ImagePreprocessing computes exactly what each family's `preprocess_input` computes."""

import keras
import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer.backbones import registry as backbones

FAMILY_MODULES = {
    "mobilenet": keras.applications.mobilenet,
    "mobilenet_v2": keras.applications.mobilenet_v2,
    "resnet50": keras.applications.resnet,
    "resnet50_v2": keras.applications.resnet_v2,
    "vgg16": keras.applications.vgg16,
    "densenet121": keras.applications.densenet,
    "inception_v3": keras.applications.inception_v3,
    "inception_resnet_v2": keras.applications.inception_resnet_v2,
    "xception": keras.applications.xception,
    "nasnet_mobile": keras.applications.nasnet,
    "efficientnet_b0": keras.applications.efficientnet,
    "efficientnet_v2_b0": keras.applications.efficientnet_v2,
    "convnext_tiny": keras.applications.convnext,
    "mobilenet_v3_small": keras.applications.mobilenet_v3,
}


@pytest.mark.parametrize("name", sorted(FAMILY_MODULES))
def test_matches_keras_preprocess_input(name):
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = FAMILY_MODULES[name].preprocess_input(images.copy())
    mode = backbones.get_spec(name).preprocessing
    if mode is None:
        # These families rescale inside the model; their preprocess_input is the identity.
        np.testing.assert_array_equal(expected, images)
        return
    actual = kt.ImagePreprocessing(mode)(images)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-5, atol=1e-4)


def test_unit_mode_and_config_round_trip():
    layer = kt.ImagePreprocessing("unit")
    np.testing.assert_allclose(np.asarray(layer(np.full((1, 1, 1, 3), 51.0))), 0.2, rtol=1e-6)
    clone = kt.ImagePreprocessing.from_config(layer.get_config())
    assert clone.mode == "unit"


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="must be one of"):
        kt.ImagePreprocessing("imagenet")
