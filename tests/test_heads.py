"""Heads and the classifier model: options, tasks, float32 output, saving."""

import keras
import numpy as np
import pytest

import keras_transfer as kt


@pytest.fixture(scope="module")
def small_backbone():
    return kt.create_backbone("mobilenet_v2", input_shape=(32, 32, 3), weights=None)


def test_default_head_is_the_keras_guide_head(small_backbone):
    model = kt.create_classifier(small_backbone, 4)
    head = model.head
    assert (head.pooling, head.hidden_units, head.dropout, head.task) == (
        "avg",
        (),
        0.2,
        "multiclass",
    )
    assert isinstance(model.layers[1], kt.ImagePreprocessing)
    outputs = model.predict(np.random.uniform(0, 255, (3, 32, 32, 3)), verbose=0)
    assert outputs.shape == (3, 4)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def dense_reference(head, pooled):
    """What the output layer computes from `pooled`, in numpy: x @ kernel + bias."""
    kernel, bias = (np.asarray(w) for w in head.output_dense.get_weights())
    return pooled.astype("float64") @ kernel + bias


POOLING_REFERENCES = {
    "avg": lambda x: x.mean(axis=(1, 2)),
    "max": lambda x: x.max(axis=(1, 2)),
    "avgmax": lambda x: np.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=-1),
    "flatten": lambda x: x.reshape(len(x), -1),
}


@pytest.mark.parametrize("pooling", sorted(POOLING_REFERENCES))
def test_pooling_options_match_numpy(pooling):
    # A 3x4 map with distinct values: average, maximum and flattening all differ on it.
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype("float32")
    head = kt.ClassificationHead(3, pooling=pooling, dropout=0.0)
    y = np.asarray(head(x))
    pooled = POOLING_REFERENCES[pooling](x)
    assert head.output_dense.kernel.shape == (pooled.shape[1], 3)
    np.testing.assert_allclose(np.asarray(head.pool(x)), pooled, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y, softmax(dense_reference(head, pooled)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "task, units, activation",
    [
        ("multiclass", 5, softmax),
        ("binary", 1, sigmoid),
        ("multilabel", 5, sigmoid),
        ("regression", 5, lambda z: z),
    ],
)
def test_tasks(task, units, activation):
    num_classes = 1 if task == "binary" else 5
    head = kt.ClassificationHead(num_classes, task=task, dropout=0.0, pooling=None)
    x = np.random.default_rng(1).normal(size=(16, 8)).astype("float32") * 3
    y = np.asarray(head(x))
    assert y.shape == (16, units)
    np.testing.assert_allclose(y, activation(dense_reference(head, x)), rtol=1e-5, atol=1e-6)


def test_regression_head_is_linear_and_unbounded():
    head = kt.ClassificationHead(2, task="regression", dropout=0.0, pooling=None)
    x = np.random.default_rng(2).normal(size=(8, 4)).astype("float32")
    y = np.asarray(head(x))
    zero = np.asarray(head(np.zeros((1, 4), "float32")))  # the bias
    # Linear: f(a*x) - f(0) = a * (f(x) - f(0)), for any scale and sign, with no squashing.
    for scale in (-1000.0, 0.5, 1000.0):
        np.testing.assert_allclose(
            np.asarray(head(x * scale)) - zero, scale * (y - zero), rtol=1e-4, atol=1e-3
        )
    big = np.asarray(head(x * 1000.0))
    assert big.max() > 100 and big.min() < -100


def test_logits_output_and_matching_loss():
    head = kt.ClassificationHead(3, logits=True, pooling=None)
    assert head.default_loss().get_config()["from_logits"] is True
    y = np.asarray(head(np.ones((2, 4), "float32") * 10))
    assert not np.allclose(y.sum(1), 1.0)


def test_dense_stack_with_batch_norm(small_backbone):
    model = kt.create_classifier(
        small_backbone,
        2,
        head={"hidden_units": [16, 8], "batch_norm": True, "dropout": 0.3, "activation": "gelu"},
    )
    names = [layer.name for layer in model.head._flatten_layers(include_self=False)]
    for expected in ("hidden_0_dense", "hidden_0_bn", "hidden_1_act", "dropout_2", "predictions"):
        assert expected in names
    assert model.head.hidden_layers[1][0].kernel.shape == (16, 8)


def test_kernel_regularizer_covers_every_head_kernel_and_survives_from_config():
    head = kt.ClassificationHead(
        3, pooling=None, hidden_units=(4,), kernel_regularizer=keras.regularizers.L2(0.5)
    )
    head(np.ones((2, 6), "float32"))
    kernels = [head.hidden_layers[0][0].kernel, head.output_dense.kernel]
    expected = sum(0.5 * float(np.sum(np.array(k) ** 2)) for k in kernels)
    assert float(sum(head.losses)) == pytest.approx(expected, rel=1e-5)
    again = kt.ClassificationHead.from_config(head.get_config())
    assert again.kernel_regularizer.get_config() == {"l2": 0.5}


def test_output_is_float32_under_mixed_precision(small_backbone):
    keras.config.set_dtype_policy("mixed_float16")
    backbone = kt.create_backbone("mobilenet_v2", input_shape=(32, 32, 3), weights=None)
    model = kt.create_classifier(backbone, 3, head={"hidden_units": [8]})
    assert model.head.hidden_layers[0][0].compute_dtype == "float16"
    assert model.output.dtype == "float32"
    assert model.predict(np.zeros((1, 32, 32, 3)), verbose=0).dtype == np.float32


def test_bad_head_arguments_are_clear_errors(small_backbone):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        kt.create_classifier(small_backbone, 0)
    with pytest.raises(ValueError, match=r"Unknown head option\(s\) \['dropuot'\]"):
        kt.create_classifier(small_backbone, 2, head={"dropuot": 0.1})
    with pytest.raises(ValueError, match="task must be one of"):
        kt.ClassificationHead(2, task="softmax")
    with pytest.raises(ValueError, match="pooling=None"):
        kt.ClassificationHead(2, pooling=None)(np.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="task='binary' has one sigmoid output"):
        kt.ClassificationHead(3, task="binary")
    with pytest.raises(ValueError, match="3 class names"):
        kt.create_classifier(small_backbone, 2, class_names=["a", "b", "c"])
    with pytest.raises(TypeError, match="only apply when `backbone` is a name"):
        kt.create_classifier(small_backbone, 2, weights=None)


def test_feature_block_cuts_the_backbone():
    model = kt.create_classifier(
        "mobilenet_v2", 2, feature_block="block_6", input_shape=(32, 32, 3), weights=None
    )
    assert model.backbone.output_shape == (None, 2, 2, 64)
    assert [b.name for b in model.blocks][-1] == "block_6"


@pytest.mark.parametrize(
    "head",
    [None, {"pooling": "avgmax", "hidden_units": [8], "batch_norm": True, "task": "multilabel"}],
)
def test_save_and_reload_with_safe_mode_gives_identical_predictions(tmp_path, head):
    model = kt.create_classifier(
        "mobilenet",
        3,
        head=head,
        input_shape=(32, 32, 3),
        weights=None,
        alpha=0.25,  # the tests' small MobileNet: the round trip, not the size, is tested
        class_names=list("abc"),
    )
    model.compile()
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 2, (8, 3)) if head else np.arange(8) % 3
    model.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, kt.TransferClassifier)
    assert loaded.class_names == ["a", "b", "c"]
    assert loaded.backbone_name == "mobilenet"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    # The compiled state comes back too: training can continue right away.
    assert loaded.optimizer is not None and loaded.loss is not None
    loaded.fit(x, y, epochs=1, verbose=0)


def test_classifier_summary_and_get_blocks_agree(small_backbone):
    model = kt.create_classifier(small_backbone, 2)
    assert [b.name for b in model.blocks] == small_backbone.block_names()
    assert [b.name for b in kt.get_blocks(model)] == small_backbone.block_names()


def test_create_classifier_from_image_data_takes_its_classes_names_and_size(tiny_image_folder):
    data = kt.image_folder_dataset(tiny_image_folder, image_size=48, batch_size=4)

    model = kt.create_classifier("mobilenet", data, weights=None, alpha=0.25)

    assert model.input_shape == (None, 48, 48, 3)
    assert model.output_shape == (None, 2) and model.class_names == ["ants", "bees"]


def test_fit_two_phase_names_both_image_sizes_when_data_and_model_differ(tiny_image_folder):
    data = kt.image_folder_dataset(tiny_image_folder, image_size=48, batch_size=4)
    model = kt.create_classifier("mobilenet", 2, input_shape=(32, 32, 3), weights=None, alpha=0.25)

    with pytest.raises(
        ValueError, match=r"48x48 images but the model takes 32x32.*create_classifier"
    ):
        kt.fit_two_phase(model, data.train, data.validation, verbose=0)
