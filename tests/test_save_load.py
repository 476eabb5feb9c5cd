"""The save/load matrix: every model keras_transfer builds round-trips through `.keras`.

Each case saves, reloads with `safe_mode=True` (hub backbones: in a new process with
`safe_mode=False`, their documented exception) and checks identical predictions.
"""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import make_tiny_classifier
from conftest import tiny_images

import keras_transfer as kt
from keras_transfer.optimizers import layerwise as optimizers
from keras_transfer.training import two_phase as training

# One variant per family at its smallest input. The fast set covers every preprocessing
# mode ("tf", "caffe", "torch", and inside the model); the others are big and slow to save.
FAST_FAMILIES = {
    "mobilenet": 32,
    "mobilenet_v3_small": 32,
    "efficientnet_b0": 32,
    "densenet121": 32,
    "vgg16": 32,
}
SLOW_FAMILIES = {
    "convnext_tiny": 32,
    "efficientnet_v2_b0": 32,
    "inception_v3": 75,
    "inception_resnet_v2": 75,
    "mobilenet_v2": 32,
    "nasnet_mobile": 32,
    "resnet50": 32,
    "resnet50_v2": 32,
    "xception": 71,
}
FAMILIES = [pytest.param(name, size) for name, size in FAST_FAMILIES.items()] + [
    pytest.param(name, size, marks=pytest.mark.slow) for name, size in SLOW_FAMILIES.items()
]


def images(size, n=4, seed=0):
    return tiny_images(n, size, seed)


def no_lambda_layers(model):
    return not [
        layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Lambda)
    ]


def reload(model, path):
    model.save(path)
    return keras.saving.load_model(path, safe_mode=True)


def predict(model, x):
    # An eager call: no tf.function tracing per model, which dominates these tests' time.
    return keras.ops.convert_to_numpy(model(x, training=False))


def assert_same_predictions(model, loaded, x):
    np.testing.assert_array_equal(predict(loaded, x), predict(model, x))


@pytest.mark.parametrize("name, size", FAMILIES)
def test_every_backbone_family(name, size, tmp_path):
    model = kt.create_classifier(name, 3, input_shape=(size, size, 3), weights=None)
    assert no_lambda_layers(model)
    loaded = reload(model, tmp_path / "model.keras")
    assert loaded.backbone_name == name
    assert [b.name for b in loaded.blocks] == [b.name for b in model.blocks]
    assert_same_predictions(model, loaded, images(size))


HEAD_OPTIONS = {
    "default": {},
    "max": {"pooling": "max"},
    "avgmax": {"pooling": "avgmax"},
    "flatten": {"pooling": "flatten"},
    "dense_stack_bn": {"hidden_units": [16, 8], "batch_norm": True, "activation": "gelu"},
    "no_dropout": {"dropout": 0.0},
    "logits": {"logits": True},
    "binary": {"task": "binary"},
    "multilabel": {"task": "multilabel"},
    "regression": {"task": "regression"},
}


@pytest.mark.parametrize("option", sorted(HEAD_OPTIONS))
def test_every_head_option(option, tmp_path):
    head = HEAD_OPTIONS[option]
    task = head.get("task", "multiclass")
    num_classes = 1 if task == "binary" else 3
    model = make_tiny_classifier(num_classes, head=head)
    model.compile()
    loaded = reload(model, tmp_path / "model.keras")
    assert loaded.head.get_config() == model.head.get_config()
    assert type(loaded.loss) is type(model.loss)  # the compiled state came back too
    assert_same_predictions(model, loaded, images(32))


def test_feature_block_cut_and_class_names(tmp_path):
    model = kt.create_classifier(
        "efficientnet_b0",
        2,
        feature_block="block4a",
        class_names=["ant", "bee"],
        input_shape=(32, 32, 3),
        weights=None,
    )
    loaded = reload(model, tmp_path / "model.keras")
    assert loaded.class_names == ["ant", "bee"]
    assert loaded.blocks[-1].name == "block4a"
    assert_same_predictions(model, loaded, images(32))


def test_mixed_precision_model(tmp_path):
    keras.config.set_dtype_policy("mixed_float16")
    model = kt.create_classifier("mobilenet_v2", 3, input_shape=(32, 32, 3), weights=None)
    loaded = reload(model, tmp_path / "model.keras")
    assert loaded.backbone.dtype_policy.name == "mixed_float16"
    assert loaded.output.dtype == "float32"
    assert_same_predictions(model, loaded, images(32))


def test_two_phase_model_with_layerwise_lr_keeps_optimizer_state(tmp_path):
    """After `fit_two_phase(lr_decay=)`, the reloaded model continues training exactly as
    the original would: weights, multipliers, moments and step count all round-trip."""
    model = make_tiny_classifier(3)
    x, y = images(32, n=8), (np.arange(8) % 3).astype("int32")
    training.fit_two_phase(
        model,
        x,
        y=y,
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze=3,
        lr_decay=0.5,
        batch_size=4,
        verbose=0,
    )
    assert isinstance(model.optimizer, optimizers.LayerwiseLearningRate)
    loaded = reload(model, tmp_path / "model.keras")
    assert type(loaded.optimizer).__name__ == type(model.optimizer).__name__
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 2
    assert_same_predictions(model, loaded, x)
    for original in (model, loaded):
        original.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_l2sp_regularised_model(tmp_path):
    model = make_tiny_classifier(3, head={})
    kt.apply_l2sp(model)
    model.compile()
    loaded = reload(model, tmp_path / "model.keras")
    assert_same_predictions(model, loaded, images(32))


HUB_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import keras, numpy as np
    import keras_transfer
    loaded = keras.saving.load_model(sys.argv[1], safe_mode=False)
    x = np.load(sys.argv[2])
    print(json.dumps(loaded.predict(x, verbose=0).tolist()))
    """
)


@pytest.mark.tensorflow_only
def test_hub_backbone_in_this_and_a_new_process(tmp_path, export_tiny_module):
    handle = export_tiny_module(tmp_path / "module")
    backbone = kt.create_backbone(f"hub:{handle}")
    model = kt.create_classifier(backbone, 2, head={"dropout": 0.0})
    assert no_lambda_layers(model)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 4)).astype("float32")
    path = tmp_path / "model.keras"
    loaded = reload(model, path)  # safe mode: this process loaded the SavedModel itself
    assert_same_predictions(model, loaded, x)

    np.save(tmp_path / "x.npy", x)
    (tmp_path / "load.py").write_text(HUB_SCRIPT)
    output = subprocess.run(
        [sys.executable, str(tmp_path / "load.py"), str(path), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert output.returncode == 0, output.stderr[-2000:]
    predictions = np.array(json.loads(output.stdout.strip().splitlines()[-1]), "float32")
    np.testing.assert_allclose(predictions, predict(model, x), rtol=1e-6, atol=1e-7)
