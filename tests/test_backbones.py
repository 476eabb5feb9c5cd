"""The backbone registry: every keras.applications family builds headless, with the right
blocks and preprocessing, and bad requests fail with errors that say what to do."""

import urllib.error

import keras
import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer.backbones import registry as backbones

# One variant per family, at the smallest input each accepts (weights=None: no network).
FAMILY_VARIANTS = {
    "convnext": ("convnext_tiny", 32),
    "densenet": ("densenet121", 32),
    "efficientnet": ("efficientnet_b0", 32),
    "efficientnet_v2": ("efficientnet_v2_b0", 32),
    "inception_v3": ("inception_v3", 75),
    "inception_resnet_v2": ("inception_resnet_v2", 75),
    "mobilenet": ("mobilenet", 32),
    "mobilenet_v2": ("mobilenet_v2", 32),
    "mobilenet_v3": ("mobilenet_v3_small", 32),
    "nasnet": ("nasnet_mobile", 32),
    "resnet": ("resnet50", 32),
    "resnet_v2": ("resnet50_v2", 32),
    "vgg": ("vgg16", 32),
    "xception": ("xception", 71),
}

EXPECTED_BLOCKS = {
    "mobilenet": ["stem"] + [f"conv_dw_{i}" for i in range(1, 14)],
    "mobilenet_v2": ["stem"] + [f"block_{i}" for i in range(17)] + ["top"],
    "mobilenet_v3_small": ["stem"] + [f"block_{i}" for i in range(11)] + ["top"],
    "resnet50": ["stem", "conv2", "conv3", "conv4", "conv5"],
    "resnet50_v2": ["stem", "conv2", "conv3", "conv4", "conv5", "top"],
    "densenet121": ["stem", "conv2", "conv3", "conv4", "conv5", "top"],
    "vgg16": [f"block{i}" for i in range(1, 6)],
    "efficientnet_b0": [
        "stem",
        "block1a",
        "block2a",
        "block2b",
        "block3a",
        "block3b",
        "block4a",
        "block4b",
        "block4c",
        "block5a",
        "block5b",
        "block5c",
        "block6a",
        "block6b",
        "block6c",
        "block6d",
        "block7a",
        "top",
    ],
    "inception_v3": ["stem"] + [f"mixed{i}" for i in range(11)],
    "inception_resnet_v2": ["stem", "mixed_5b"]
    + [f"block35_{i}" for i in range(1, 11)]
    + ["mixed_6a"]
    + [f"block17_{i}" for i in range(1, 21)]
    + ["mixed_7a"]
    + [f"block8_{i}" for i in range(1, 11)]
    + ["top"],
    "xception": [f"block{i}" for i in range(1, 15)],
    "convnext_tiny": ["stem", "stage_0", "stage_1", "stage_2", "stage_3"],
    "nasnet_mobile": ["stem", "stem_1", "stem_2"]
    + [f"cell_{i}" for i in range(4)]
    + ["reduce_4"]
    + [f"cell_{i}" for i in range(5, 9)]
    + ["reduce_8"]
    + [f"cell_{i}" for i in range(9, 13)],
}


def test_every_family_is_registered():
    families = {backbones.get_spec(name).family for name in kt.list_backbones()}
    assert families == set(FAMILY_VARIANTS)
    assert len(kt.list_backbones()) >= 35
    assert kt.list_backbones("^resnet") == [
        "resnet101",
        "resnet101_v2",
        "resnet152",
        "resnet152_v2",
        "resnet50",
        "resnet50_v2",
    ]


@pytest.mark.parametrize("family", sorted(FAMILY_VARIANTS))
def test_family_builds_headless_with_complete_ordered_blocks(family):
    name, size = FAMILY_VARIANTS[family]
    backbone = kt.create_backbone(name, input_shape=(size, size, 3), weights=None)
    model = backbone.model
    assert len(model.output_shape) == 4, "include_top=False gives a feature map"
    blocks = backbone.blocks
    if name in EXPECTED_BLOCKS:
        assert [b.name for b in blocks] == EXPECTED_BLOCKS[name]
    # Every weight belongs to exactly one block, so freezing and per-block learning rates
    # cover the whole backbone.
    block_variable_ids = [id(v) for b in blocks for v in b.variables]
    assert len(block_variable_ids) == len(set(block_variable_ids))
    assert set(block_variable_ids) == {id(v) for v in model.weights}
    assert [b.index for b in blocks] == list(range(len(blocks)))
    # Blocks follow the graph: each block's last layer comes after the previous block's.
    positions = {id(layer): i for i, layer in enumerate(model.layers)}
    ends = [positions[id(b.layers[-1])] for b in blocks]
    assert ends == sorted(ends)


def test_blocks_follow_data_flow_in_inception():
    """Inception branches are auto-named; they must land in the block of the merge they
    feed, not in the block before it."""
    backbone = kt.create_backbone("inception_v3", input_shape=(75, 75, 3), weights=None)
    blocks = {b.name: b for b in backbone.blocks}
    mixed1 = blocks["mixed1"]
    assert mixed1.layers[-1].name == "mixed1"
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in mixed1.layers) == 7
    assert all(
        isinstance(
            layer,
            (
                keras.layers.Conv2D,
                keras.layers.BatchNormalization,
                keras.layers.Activation,
                keras.layers.MaxPooling2D,
            ),
        )
        for layer in blocks["stem"].layers
    )


def test_cut_gives_intermediate_features():
    backbone = kt.create_backbone("mobilenet_v2", input_shape=(64, 64, 3), weights=None)
    cut = backbone.cut("block_12")
    assert cut.model.output_shape == (None, 4, 4, 96)
    assert cut.block_names()[-1] == "block_12"
    assert kt.create_backbone("vgg16", input_shape=(32, 32, 3), weights=None).cut(
        1
    ).model.output_shape == (None, 8, 8, 128)
    with pytest.raises(ValueError, match="No block named 'block_99'"):
        backbone.cut("block_99")


def test_get_blocks_recognises_plain_keras_applications_models():
    base = keras.applications.ResNet50V2(include_top=False, weights=None, input_shape=(32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(base(inputs)))
    model = keras.Model(inputs, outputs)
    assert [b.name for b in kt.get_blocks(model)] == EXPECTED_BLOCKS["resnet50_v2"]
    with pytest.raises(ValueError, match="Cannot find a known backbone"):
        kt.get_blocks(keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]))


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="Did you mean: .*mobilenet_v2"):
        kt.create_backbone("mobilenetv2")
    with pytest.raises(ValueError, match="list_backbones"):
        kt.create_backbone("no_such_net")


def test_input_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 75x75"):
        kt.create_backbone("inception_v3", input_shape=(64, 64, 3), weights=None)
    with pytest.raises(ValueError, match=r"\(height, width, channels\)"):
        kt.create_backbone("vgg16", input_shape=(64, 64), weights=None)


def test_pretrained_weights_need_rgb():
    with pytest.raises(ValueError, match="3 RGB channels"):
        kt.create_backbone("mobilenet", input_shape=(64, 64, 1), weights="imagenet")
    assert kt.create_backbone("mobilenet", input_shape=(64, 64, 1), weights=None).input_shape == (
        64,
        64,
        1,
    )


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file"):
        kt.create_backbone("mobilenet", input_shape=(64, 64, 3), weights=str(tmp_path / "nope.h5"))


def test_weights_file_of_another_architecture_is_reported(tmp_path):
    path = str(tmp_path / "vgg.weights.h5")
    kt.create_backbone("vgg16", input_shape=(32, 32, 3), weights=None).model.save_weights(path)
    with pytest.raises(ValueError, match="does not fit backbone 'mobilenet'"):
        kt.create_backbone("mobilenet", input_shape=(32, 32, 3), weights=path)


def test_weights_path_loads_at_another_input_size(tmp_path):
    source = kt.create_backbone("mobilenet", input_shape=(64, 64, 3), weights=None)
    path = str(tmp_path / "mobilenet.weights.h5")
    source.model.save_weights(path)
    loaded = kt.create_backbone("mobilenet", input_shape=(96, 96, 3), weights=path)
    for a, b in zip(source.model.weights, loaded.model.weights):
        np.testing.assert_array_equal(np.array(a), np.array(b))


def test_offline_imagenet_download_names_the_cache_file_and_the_remedy(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", no_network)
    monkeypatch.setattr("keras.src.backend.config.keras_home", lambda: str(tmp_path))
    with pytest.raises(kt.WeightsUnavailableError) as info:
        kt.create_backbone("mobilenet", input_shape=(128, 128, 3), weights="imagenet")
    message = str(info.value)
    assert str(tmp_path / "models" / "mobilenet_1_0_128_tf_no_top.h5") in message
    assert "weights='/path/to/mobilenet_1_0_128_tf_no_top.h5'" in message
