"""Freezing by block: which weights train, BatchNorm stays in inference mode, and bad
requests are clear errors."""

import keras
import numpy as np
import pytest

import keras_transfer as kt


@pytest.fixture
def model():
    return kt.create_classifier("mobilenet_v2", 2, input_shape=(32, 32, 3), weights=None)


def _trainable_ids(model):
    return {id(v) for v in model.trainable_weights}


def test_freeze_leaves_only_the_head_trainable(model):
    kt.freeze(model)
    assert _trainable_ids(model) == {id(v) for v in model.head.trainable_weights}
    assert kt.trainable_blocks(model) == []


def test_unfreeze_top_blocks_keeps_batch_norm_frozen(model):
    names = kt.unfreeze(model, top_blocks=2)
    assert names == ["block_16", "top"]
    assert kt.trainable_blocks(model) == ["block_16", "top"]
    blocks = {b.name: b for b in model.blocks}
    for layer in blocks["block_16"].layers + blocks["top"].layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable
        elif layer.weights:
            assert layer.trainable
    for layer in blocks["block_15"].layers:
        assert not layer.trainable
    expected = {id(v) for v in model.head.trainable_weights}
    for name in ("block_16", "top"):
        expected |= {
            id(v)
            for layer in blocks[name].layers
            if not isinstance(layer, keras.layers.BatchNormalization)
            for v in layer.weights
        }
    assert _trainable_ids(model) == expected


def test_unfreeze_by_name_fraction_and_all(model):
    assert kt.unfreeze(model, from_block="block_14") == ["block_14", "block_15", "block_16", "top"]
    assert len(kt.unfreeze(model, fraction=0.5)) == round(0.5 * len(model.blocks))
    assert kt.unfreeze(model, top_blocks="all") == [b.name for b in model.blocks]
    assert kt.unfreeze(model) == [b.name for b in model.blocks]


def test_frozen_batch_norm_runs_in_inference_mode(model):
    kt.unfreeze(model, top_blocks="all")
    bn = next(
        layer
        for layer in model.backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    before = [np.array(w).copy() for w in bn.non_trainable_weights]
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model(x, training=True)
    for old, new in zip(before, bn.non_trainable_weights):
        np.testing.assert_array_equal(old, np.array(new))
    # With train_bn the moving statistics follow the batches.
    kt.unfreeze(model, top_blocks="all", train_bn=True)
    model(x, training=True)
    assert any(not np.array_equal(o, np.array(n)) for o, n in zip(before, bn.non_trainable_weights))


def test_train_bn_while_frozen(model):
    kt.freeze(model, train_bn=True)
    trainable_layers = {
        type(layer) for layer in model.backbone.layers if layer.trainable and layer.weights
    }
    assert trainable_layers == {keras.layers.BatchNormalization}


def test_bad_unfreeze_requests(model):
    with pytest.raises(ValueError, match="the backbone has 19"):
        kt.unfreeze(model, top_blocks=20)
    with pytest.raises(ValueError, match="No block named 'block_99'"):
        kt.unfreeze(model, from_block="block_99")
    with pytest.raises(ValueError, match="at most one"):
        kt.unfreeze(model, top_blocks=1, fraction=0.5)
    with pytest.raises(ValueError, match="fraction must be in"):
        kt.unfreeze(model, fraction=1.5)


def test_freezing_works_on_a_plain_keras_model():
    base = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(base(inputs)))
    model = keras.Model(inputs, outputs)
    assert kt.unfreeze(model, top_blocks=1) == ["conv_dw_13"]
    trainable_layer_names = {
        layer.name for layer in base.layers if layer.trainable and layer.weights
    }
    assert trainable_layer_names == {"conv_dw_13", "conv_pw_13"}


def test_frozen_state_survives_save_and_load(model, tmp_path):
    kt.unfreeze(model, top_blocks=3)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert (
        kt.trainable_blocks(loaded) == kt.trainable_blocks(model) == ["block_15", "block_16", "top"]
    )
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
