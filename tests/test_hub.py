"""Tests for keras_transfer.backbones.hub: SavedModels exported here, plus the real hub-style model."""

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import REG_SCALE
from helpers import TRAINING_OFFSET
from helpers import export_tiny_module
from helpers import hub_classifier as classifier
from helpers import hub_inputs as inputs

from keras_transfer import heads
from keras_transfer.backbones import freezing
from keras_transfer.backbones import hub
from keras_transfer.backbones import registry as backbones


@pytest.fixture(scope="module")
def tiny_module(tmp_path_factory):
    return export_tiny_module(tmp_path_factory.mktemp("hub") / "tiny")


def module_values(layer):
    return {layer.variable_name(v): v.numpy().copy() for v in layer.weights}


def hub_layer(model):
    return next(x for x in model.backbone.layers if isinstance(x, hub.HubBackbone))


def fit_briefly(model, steps=2, **compile_kwargs):
    x = inputs(8 * steps)
    y = np.arange(8 * steps) % 2
    model.compile(optimizer=keras.optimizers.SGD(0.1), **compile_kwargs)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)


# --- the layer ------------------------------------------------------------------------


def test_variables_are_the_modules_own_and_named_for_keras(tiny_module):
    layer = hub.HubBackbone(tiny_module, trainable=True)
    assert [layer.variable_name(v) for v in layer.weights] == [
        "stem/dense/kernel",
        "stem/dense/bias",
        "block_1/BatchNorm/gamma",
        "block_2/dense/kernel",
        "block_1/BatchNorm/moving_mean",
    ]
    assert len(layer.trainable_weights) == 4
    assert all(":" not in v.path and v.path.startswith(layer.name + "/") for v in layer.weights)
    # Wrapped, not copied: assigning through Keras changes what the module computes.
    x = inputs()
    before = layer(x).numpy()
    layer.weights[3].assign(layer.weights[3] * 2.0)
    np.testing.assert_allclose(layer(x).numpy(), before * 2.0, rtol=1e-5)


def test_training_reaches_module_only_when_trainable(tiny_module):
    x = inputs()
    trainable = hub.HubBackbone(tiny_module, trainable=True)
    frozen = hub.HubBackbone(tiny_module, trainable=False)
    inference = trainable(x, training=False).numpy()
    np.testing.assert_allclose(frozen(x, training=True).numpy(), inference, rtol=1e-6)
    assert np.all(trainable(x, training=True).numpy() > inference + TRAINING_OFFSET / 2)
    # Frozen batch-norm variables mean inference mode, as for a frozen Keras BN layer.
    for variable in trainable.weights:
        if "BatchNorm" in trainable.variable_name(variable):
            variable.trainable = False
    assert not trainable.module_training


def test_fit_trains_module_and_frozen_is_bit_identical(tiny_module):
    model = classifier(tiny_module)
    layer = hub_layer(model)
    before = module_values(layer)
    fit_briefly(model)
    after = module_values(layer)
    for name in ("stem/dense/kernel", "block_1/BatchNorm/gamma", "block_2/dense/kernel"):
        assert not np.array_equal(before[name], after[name]), name
    # training=True reached the module: its moving average moved.
    assert not np.array_equal(
        before["block_1/BatchNorm/moving_mean"], after["block_1/BatchNorm/moving_mean"]
    )

    freezing.freeze(model)
    frozen_before = module_values(layer)
    head_before = model.head.get_weights()
    fit_briefly(model)
    for name, value in module_values(layer).items():
        np.testing.assert_array_equal(value, frozen_before[name], err_msg=name)
    assert any(
        not np.array_equal(a, b) for a, b in zip(head_before, model.head.get_weights(), strict=True)
    )


def test_regularization_losses_only_when_trainable(tiny_module):
    layer = hub.HubBackbone(tiny_module, trainable=True)
    model = keras.Sequential([keras.Input((4,)), layer])
    model(inputs())
    expected = REG_SCALE * np.sum(layer.weights[3].numpy() ** 2)
    assert len(model.losses) == 1
    np.testing.assert_allclose(float(model.losses[0]), expected, rtol=1e-5)
    layer.trainable = False
    model(inputs())
    assert model.losses == []


def test_module_without_variable_lists(tmp_path):
    path = export_tiny_module(tmp_path / "plain", reusable_api=False)
    model = classifier(path)
    layer = hub_layer(model)
    assert len(layer.weights) == 5 and len(layer.trainable_weights) == 4
    before = module_values(layer)
    fit_briefly(model)
    assert not np.array_equal(
        before["block_2/dense/kernel"], module_values(layer)["block_2/dense/kernel"]
    )


def test_signature_and_output_key_of_an_exported_keras_model(tmp_path):
    x_in = keras.Input((4,), name="x")
    features = keras.layers.Dense(6, name="features")(x_in)
    logits = keras.layers.Dense(2, name="logits")(features)
    source = keras.Model(x_in, {"features": features, "logits": logits})
    source.export(str(tmp_path / "exported"), verbose=False)
    x = inputs()
    expected = source.predict(x, verbose=0)

    layer = hub.HubBackbone(
        str(tmp_path / "exported"), signature="serving_default", output_key="logits"
    )
    np.testing.assert_allclose(layer(x).numpy(), expected["logits"], rtol=1e-5, atol=1e-6)
    both = hub.HubBackbone(str(tmp_path / "exported"), signature="serving_default")(x)
    assert sorted(both) == ["features", "logits"]
    with pytest.raises(ValueError, match="output_key='nope' is not an output.*features"):
        hub.HubBackbone(str(tmp_path / "exported"), signature="serving_default", output_key="nope")(
            x
        )
    with pytest.raises(ValueError, match="no signature 'serve_me'.*serving_default"):
        hub.HubBackbone(str(tmp_path / "exported"), signature="serve_me")
    with pytest.raises(ValueError, match="not callable.*signature="):
        hub.HubBackbone(str(tmp_path / "exported"))


def test_mixed_precision_casts_around_float32_module(tiny_module):
    keras.config.set_dtype_policy("mixed_float16")
    model = classifier(tiny_module)
    layer = hub_layer(model)
    assert layer.compute_dtype == "float16"
    assert model.backbone.output.dtype == "float16"
    assert all(v.dtype == "float32" for v in layer.weights)
    model.compile(optimizer="sgd")
    model.fit(inputs(16), np.arange(16) % 2, batch_size=8, verbose=0)
    assert model.predict(inputs(), verbose=0).dtype == np.float32


# --- blocks and freezing --------------------------------------------------------------


def test_default_block_names():
    slim = [
        f"MobilenetV1/Conv2d_{i}_{p}/{w}"
        for i in (1, 2)
        for p in ("depthwise", "pointwise")
        for w in ("weights", "BatchNorm/gamma")
    ]
    assert sorted(set(hub.hub_block_names(["MobilenetV1/Conv2d_0/weights"] + slim))) == [
        "Conv2d_0",
        "Conv2d_1",
        "Conv2d_2",
    ]
    keras_names = [
        "conv1/kernel:0",
        "conv1_bn/gamma:0",
        "conv_dw_1/depthwise_kernel:0",
        "conv_dw_1_bn/beta:0",
        "conv_pw_1/kernel:0",
        "conv_pw_1_bn/moving_mean:0",
    ]
    assert hub.hub_block_names(keras_names) == [
        "conv1",
        "conv1",
        "conv_dw_1",
        "conv_dw_1",
        "conv_dw_1",
        "conv_dw_1",
    ]
    efficientnet = [
        "stem_conv/kernel",
        "block1a_dwconv/depthwise_kernel",
        "block1a_se_reduce/kernel",
        "block2a_expand_conv/kernel",
        "top_conv/kernel",
    ]
    assert hub.hub_block_names(efficientnet) == [
        "stem_conv",
        "block1a",
        "block1a",
        "block2a",
        "top_conv",
    ]
    assert hub.hub_block_names(keras_names, r"_(\d+)") == ["stem", "stem", "1", "1", "1", "1"]


def test_unfreeze_top_blocks_trains_only_those(tiny_module):
    model = classifier(tiny_module)
    assert [b.name for b in backbones.get_blocks(model)] == ["stem", "block_1", "block_2"]
    freezing.freeze(model)
    assert freezing.trainable_blocks(model) == []
    assert freezing.unfreeze(model, top_blocks=1) == ["block_2"]
    assert freezing.trainable_blocks(model) == ["block_2"]
    layer = hub_layer(model)
    before = module_values(layer)
    fit_briefly(model)
    after = module_values(layer)
    assert not np.array_equal(before["block_2/dense/kernel"], after["block_2/dense/kernel"])
    for name in (
        "stem/dense/kernel",
        "stem/dense/bias",
        "block_1/BatchNorm/gamma",
        "block_1/BatchNorm/moving_mean",
    ):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)

    # BN stays frozen (and the module in inference mode) unless train_bn.
    freezing.unfreeze(model)
    assert not layer.module_training and freezing.trainable_blocks(model) == ["stem", "block_2"]
    freezing.unfreeze(model, train_bn=True)
    assert layer.module_training and freezing.trainable_blocks(model) == [
        "stem",
        "block_1",
        "block_2",
    ]


def test_block_pattern_and_cut_error(tiny_module):
    backbone = backbones.create_backbone(f"hub:{tiny_module}", block_pattern=r"^(\w+)/dense")
    assert backbone.block_names() == ["stem", "block_2"]  # BatchNorm joins the block before it.
    with pytest.raises(ValueError, match="Cannot cut a TF Hub backbone"):
        backbone.cut("stem")
    with pytest.raises(Exception, match="unterminated|missing"):
        backbones.create_backbone(f"hub:{tiny_module}", block_pattern="(")


# --- saving -------------------------------------------------------------------------------


def test_save_and_load_keep_fine_tuned_weights(tiny_module, tmp_path):
    model = classifier(tiny_module)
    fit_briefly(model)
    freezing.unfreeze(model, top_blocks=1)
    x = inputs()
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "model.keras")

    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=False)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), expected)
    for name, value in module_values(hub_layer(model)).items():
        np.testing.assert_array_equal(module_values(hub_layer(reloaded))[name], value)
    assert [b.name for b in backbones.get_blocks(reloaded)] == ["stem", "block_1", "block_2"]
    assert freezing.trainable_blocks(reloaded) == ["block_2"]  # Per-block state is saved.

    # Safe mode refuses a SavedModel that this process has not loaded by itself.
    hub.clear_trusted()
    with pytest.raises(ValueError, match="safe mode refuses it.*safe_mode=False"):
        keras.saving.load_model(tmp_path / "model.keras")


def test_load_when_savedmodel_is_gone(tmp_path):
    path = export_tiny_module(tmp_path / "moving")
    classifier(path).save(tmp_path / "model.keras")
    shutil.rmtree(path)
    with pytest.raises(
        hub.HubModuleUnavailableError, match="stores the SavedModel's handle.*does not exist"
    ):
        keras.saving.load_model(tmp_path / "model.keras", safe_mode=False)


def test_export(tiny_module, tmp_path):
    model = classifier(tiny_module)
    fit_briefly(model)
    model.export(str(tmp_path / "exported"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "exported"))
    x = inputs()
    np.testing.assert_allclose(served.serve(x).numpy(), model.predict(x, verbose=0), rtol=1e-6)


# --- handles ------------------------------------------------------------------------------


def test_unreachable_handle_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))

    def blackholed(address, timeout=None, *args, **kwargs):
        raise TimeoutError(f"timed out after {timeout}s")

    monkeypatch.setattr(socket, "create_connection", blackholed)
    handle = "https://tfhub.dev/google/imagenet/mobilenet_v1_100_224/feature_vector/5"
    start = time.monotonic()
    with pytest.raises(
        hub.HubModuleUnavailableError, match="unreachable.*local SavedModel folder.*TFHUB_CACHE_DIR"
    ):
        backbones.create_backbone(f"hub:{handle}")
    assert time.monotonic() - start < 5


def test_cached_handle_needs_no_network(monkeypatch, tmp_path, tiny_module):
    handle = "https://www.kaggle.com/models/someone/tiny/TensorFlow2/default/1"
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    shutil.copytree(tiny_module, tmp_path / hashlib.sha1(handle.encode("utf8")).hexdigest())
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("network used"))
    backbone = backbones.create_backbone(f"hub:{handle}")
    assert backbone.name == f"hub:{handle}" and backbone.model.output_shape == (None, 3)


def test_bad_local_path():
    with pytest.raises(hub.HubModuleUnavailableError, match="does not exist.*saved_model.pb"):
        hub.HubBackbone("/nonexistent/saved_model_dir")


# --- distribution ---------------------------------------------------------------------

MIRRORED_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras
    sys.path.insert(0, sys.argv[2])
    from helpers import export_tiny_module, hub_inputs as inputs
    from keras_transfer import backbones, freezing, heads, hub

    path = export_tiny_module(sys.argv[1])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = heads.create_classifier(backbones.create_backbone("hub:" + path), 2)
        freezing.unfreeze(model, top_blocks=1)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    layer = next(x for x in model.backbone.layers if isinstance(x, hub.HubBackbone))
    assert strategy.num_replicas_in_sync == 2
    assert all(isinstance(v.value, tf.distribute.DistributedValues) for v in layer.weights)
    before = {layer.variable_name(v): v.numpy() for v in layer.weights}
    model.fit(inputs(32), np.arange(32) % 2, batch_size=8, epochs=1, verbose=0)
    for v in layer.weights:
        name = layer.variable_name(v)
        replicas = [r.numpy() for r in v.value.values]
        np.testing.assert_array_equal(replicas[0], replicas[1])
        changed = not np.array_equal(before[name], replicas[0])
        assert changed == (name == "block_2/dense/kernel"), name
    print("MIRRORED_OK")
    """
)


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    # A subprocess: logical devices can only be configured before TF initialises.
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "tiny"), os.path.dirname(__file__)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "MIRRORED_OK" in result.stdout, result.stderr[-3000:]


def test_jit_compile_fit_matches_the_uncompiled_run(tiny_module):
    """XLA-compiled training steps through the module compute what the plain TF function
    computes: the same losses and the same updated weights, module variables included."""
    runs = {}
    for jit_compile in (False, True):
        keras.utils.set_random_seed(0)  # the same head initialisation for both
        model = classifier(tiny_module)
        model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=jit_compile)
        assert model.jit_compile is jit_compile
        history = model.fit(
            inputs(16), np.arange(16) % 2, batch_size=8, epochs=2, shuffle=False, verbose=0
        )
        runs[jit_compile] = (history.history["loss"], module_values(hub_layer(model)), model)
    (losses, module, plain), (jit_losses, jit_module, jitted) = runs[False], runs[True]
    np.testing.assert_allclose(jit_losses, losses, rtol=1e-5)
    assert module.keys() == jit_module.keys()
    for name in module:
        np.testing.assert_allclose(jit_module[name], module[name], rtol=1e-5, atol=1e-6)
    for a, b in zip(jitted.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Training reached the module (its variables moved), so the comparison covers it.
    assert not np.array_equal(
        module["stem/dense/kernel"],
        module_values(hub.HubBackbone(tiny_module))["stem/dense/kernel"],
    )


# --- the real SavedModel ----------------------------------------------------------------


def test_real_savedmodel_matches_direct_load_and_hub_keras_layer(assets):
    path = str(assets / "tfhub" / "mobilenet_v1_100_224_feature_vector")
    backbone = backbones.create_backbone(f"hub:{path}")
    assert backbone.default_size == 224 and backbone.preprocessing == "unit"
    assert backbone.model.output_shape == (None, 1024)
    assert len(backbone.block_names()) == 14
    images = np.random.RandomState(0).uniform(0, 1, (2, 224, 224, 3)).astype("float32")
    ours = backbone.model.predict(images, verbose=0)
    direct = tf.saved_model.load(path)(images, training=False).numpy()
    np.testing.assert_allclose(ours, direct, atol=1e-5)

    import tensorflow_hub
    import tf_keras

    reference = tf_keras.Sequential([tensorflow_hub.KerasLayer(path)])
    np.testing.assert_allclose(ours, reference.predict(images, verbose=0), atol=1e-5)

    # Raw 0-255 images through the classifier's "unit" preprocessing give the same features.
    model = heads.create_classifier(backbone, 2)
    features = model.backbone(model.preprocess_layer(images * 255.0)).numpy()
    np.testing.assert_allclose(features, direct, atol=1e-5)


def test_layerwise_learning_rates_address_hub_blocks(tiny_module):
    optimizers = pytest.importorskip("keras_transfer.optimizers.layerwise")
    model = classifier(tiny_module)
    freezing.unfreeze(model, train_bn=True)
    multipliers = optimizers.layer_decay_multipliers(model, 0.5)
    # One pattern per block: the blocks of the single hub layer are told apart by path.
    assert sorted(multipliers.values()) == [0.125, 0.25, 0.5]
    layer = hub_layer(model)
    stem_kernel = next(v for v in layer.weights if layer.variable_name(v) == "stem/dense/kernel")
    assert [m for p, m in multipliers.items() if re.search(p, stem_kernel.path)] == [0.125]
    optimizer = optimizers.with_layerwise_lr(
        keras.optimizers.SGD, learning_rate=0.1, multipliers=multipliers
    )
    model.compile(optimizer=optimizer)
    before = stem_kernel.numpy().copy()
    model.fit(inputs(16), np.arange(16) % 2, batch_size=8, verbose=0)
    assert not np.array_equal(before, stem_kernel.numpy())


def test_scratch_model_of_a_hub_classifier_has_fresh_weights(tiny_module):
    from keras_transfer.diagnostics import scratch

    model = classifier(tiny_module)
    pretrained = module_values(hub_layer(model))
    baseline = scratch.scratch_model(model)
    fresh = module_values(hub_layer(baseline))
    assert fresh.keys() == pretrained.keys()
    # Rebuilding from the config reloaded the SavedModel; the values were then replaced.
    for name in ("stem/dense/kernel", "block_2/dense/kernel"):
        assert not np.allclose(fresh[name], pretrained[name]), name
        limit = np.sqrt(6.0 / sum(fresh[name].shape))  # Glorot-uniform bound
        assert np.abs(fresh[name]).max() <= limit
    np.testing.assert_array_equal(fresh["stem/dense/bias"], 0.0)  # pretrained: 0.1
    np.testing.assert_array_equal(fresh["block_1/BatchNorm/gamma"], 1.0)
    np.testing.assert_array_equal(fresh["block_1/BatchNorm/moving_mean"], 0.0)
    # The module's graph computes with the new values, and the original is untouched.
    x = inputs()
    assert not np.allclose(baseline.predict(x, verbose=0), model.predict(x, verbose=0))
    for name, value in module_values(hub_layer(model)).items():
        np.testing.assert_array_equal(value, pretrained[name])


def test_reinitialize_refuses_a_variable_of_unknown_role(tmp_path):
    module = tf.Module()
    module.kernel = tf.Variable(np.ones((4, 2), "float32"), name="dense/kernel")
    module.temperature = tf.Variable(np.ones(2, "float32"), name="head/temperature")
    module.__call__ = tf.function(
        lambda x: tf.matmul(x, module.kernel) * module.temperature,
        input_signature=[tf.TensorSpec([None, 4], tf.float32)],
    )
    tf.saved_model.save(module, str(tmp_path / "m"))
    layer = hub.HubBackbone(str(tmp_path / "m"), trainable=True)
    before = {layer.variable_name(v): v.numpy().copy() for v in layer.weights}
    with pytest.raises(ValueError, match="head/temperature"):
        layer.reinitialize()
    for v in layer.weights:  # nothing half-applied
        np.testing.assert_array_equal(v.numpy(), before[layer.variable_name(v)])
