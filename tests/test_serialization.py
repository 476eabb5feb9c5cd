"""Every class keras_transfer registers with Keras serialization round-trips: config ->
`from_config` -> the same config, and through a `.keras` file to the same outputs.

The classes come from Keras's registry (`keras_transfer>` names), so a new registered class
without a factory below fails `test_every_registered_class_has_a_factory`."""

import importlib
import importlib.util
import pkgutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_tiny_classifier
from conftest import tiny_images
from conftest import write_tiny_bert_preset
from serialization import run_model_saving_test
from serialization import run_serialization_test

import keras_transfer
from keras_transfer import few_shot
from keras_transfer import heads
from keras_transfer.adaptation import domain
from keras_transfer.adaptation import layers
from keras_transfer.adaptation import losses
from keras_transfer.backbones import hub
from keras_transfer.backbones import preprocessing
from keras_transfer.backbones.keras_hub import layers as keras_hub_layers
from keras_transfer.distillation import distiller as distillation
from keras_transfer.optimizers import layerwise as optimizers
from keras_transfer.optimizers import schedules
from keras_transfer.peft import l2sp as regularizers
from keras_transfer.training import callbacks

PREFIX = "keras_transfer>"


def registered_classes():
    """Registered name -> class, for everything the package registers on import, and the
    classes of the modules that need an optional package when it is installed."""
    for module in pkgutil.iter_modules(keras_transfer.__path__):
        importlib.import_module(f"keras_transfer.{module.name}")
    if importlib.util.find_spec("keras_hub") is not None:
        importlib.import_module("keras_transfer.apps.zero_shot_text")
    return {
        name: cls
        for name, cls in keras.saving.get_custom_objects().items()
        if name.startswith(PREFIX)
    }


REGISTERED = registered_classes()


# --- factories: each returns (instance, model holding it or None, probe of that model) ---


def rng(seed=0):
    return np.random.default_rng(seed)


def classification_head(tmp_path):
    head = heads.ClassificationHead(
        3,
        pooling="avgmax",
        hidden_units=(4,),
        batch_norm=True,
        dropout=0.1,
        kernel_regularizer="l2",
    )
    model = keras.Sequential([keras.Input((3, 3, 5)), head])
    x = rng().normal(size=(2, 3, 3, 5)).astype("float32")

    def probe(m):
        assert type(m.layers[0]) is heads.ClassificationHead
        return [m(x, training=False), sum(m.losses)]

    return head, model, probe


def zero_shot_head(tmp_path):
    head = heads.ZeroShotHead(3, projection_units=4, dropout=0.1)
    embeddings = rng(1).normal(size=(3, 4))
    head.set_class_embeddings(
        embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True),
        feature_dim=5,
        logit_scale=10.0,
        logit_bias=-1.0,
        projection_kernel=rng(2).normal(size=(5, 4)),
    )
    model = keras.Sequential([keras.Input((5,)), head])
    x = rng().normal(size=(2, 5)).astype("float32")

    def probe(m):
        assert type(m.layers[0]) is heads.ZeroShotHead
        assert m.layers[0].projection_units == 4
        return m(x, training=False)

    return head, model, probe


def transfer_classifier(tmp_path):
    model = make_tiny_classifier(3, head={"hidden_units": [4]}, class_names=["a", "b", "c"])
    x = tiny_images(2)

    def probe(m):
        assert type(m) is heads.TransferClassifier
        assert m.class_names == ["a", "b", "c"] and m.backbone_name == "mobilenet"
        return m(x, training=False)

    return model, model, probe


def multi_task_head(tmp_path):
    head = heads.MultiTaskHead(
        {
            "species": {"num_classes": 3, "hidden_units": [4], "kernel_regularizer": "l2"},
            "colour": {"num_classes": 2, "task": "multilabel", "pooling": "max"},
        },
        loss_weights={"colour": 0.5},
    )
    model = keras.Sequential([keras.Input((3, 3, 5)), head])
    x = rng().normal(size=(2, 3, 3, 5)).astype("float32")

    def probe(m):
        layer = m.layers[0]
        assert type(layer) is heads.MultiTaskHead
        assert layer.loss_weights == {"species": 1.0, "colour": 0.5}
        outputs = m(x, training=False)
        return [outputs["species"], outputs["colour"], sum(m.losses)]

    return head, model, probe


def multi_task_classifier(tmp_path):
    # Not a registered class of its own: a TransferClassifier with a MultiTaskHead.
    model = heads.create_classifier(
        "mobilenet",
        heads={"a": {"num_classes": 2}, "b": {"num_classes": 1, "task": "regression"}},
        input_shape=(32, 32, 3),
        weights=None,
        alpha=0.25,
        class_names={"a": ["x", "y"]},
    )
    x = tiny_images(2)

    def probe(m):
        assert type(m.head) is heads.MultiTaskHead and m.class_names == {"a": ["x", "y"]}
        outputs = m(x, training=False)
        return [outputs["a"], outputs["b"]]

    return model, model, probe


def probabilities_to_logits(tmp_path):
    layer = distillation.ProbabilitiesToLogits("multilabel", from_logits=False)
    model = keras.Sequential([keras.Input((3,)), layer])
    x = rng().uniform(0.05, 0.95, (2, 3)).astype("float32")

    def probe(m):
        assert type(m.layers[0]) is distillation.ProbabilitiesToLogits
        assert m.layers[0].task == "multilabel"
        return m(x)

    return layer, model, probe


def image_preprocessing(tmp_path):
    layer = preprocessing.ImagePreprocessing("caffe")
    model = keras.Sequential([keras.Input((2, 2, 3)), layer])
    x = rng().uniform(0, 255, (2, 2, 2, 3)).astype("float32")

    def probe(m):
        assert type(m.layers[0]) is preprocessing.ImagePreprocessing
        return m(x)

    return layer, model, probe


def token_pooling(tmp_path):
    layer = keras_hub_layers.TokenPooling("mean")
    model = keras.Sequential([keras.Input((5, 4)), layer])
    x = rng().normal(size=(2, 5, 4)).astype("float32")

    def probe(m):
        assert type(m.layers[0]) is keras_hub_layers.TokenPooling
        assert m.layers[0].mode == "mean"
        return m(x)

    return layer, model, probe


class TinyModule(tf.Module):
    """The smallest TF2 SavedModel a HubBackbone loads: one dense kernel."""

    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(rng().normal(size=(4, 3)).astype("float32"), name="kernel")

    # No autograph: nothing to convert, and its cache of converted functions is shared by
    # every test in the session.
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)], autograph=False)
    def __call__(self, x):
        return tf.matmul(x, self.kernel)


def hub_backbone(tmp_path):
    path = str(tmp_path / "tiny_module")
    tf.saved_model.save(TinyModule(), path)
    layer = hub.HubBackbone(path, trainable=True, name="hub")
    model = keras.Sequential([keras.Input((4,)), layer])
    x = rng().uniform(-1, 1, (2, 4)).astype("float32")

    def probe(m):
        # The perturbed (fine-tuned) kernel must come from the .keras file, not the SavedModel.
        assert type(m.layers[0]) is hub.HubBackbone
        return m(x)

    return layer, model, probe


def l2sp(tmp_path):
    reference = rng().normal(size=(3, 2)).astype("float32")
    regularizer = regularizers.L2SP(0.5, reference)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, kernel_regularizer=regularizer)]
    )
    x = rng().normal(size=(2, 3)).astype("float32")

    def probe(m):
        assert type(m.layers[0].kernel_regularizer) is regularizers.L2SP
        # The penalty's value checks that the reference came back with the model.
        return [m(x), sum(m.losses)]

    return regularizer, model, probe


def dense_model():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation="relu", name="low")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="top")(hidden))


def layerwise_optimizer(cls):
    def factory(tmp_path):
        optimizer = cls(learning_rate=0.01, multipliers={"^low/": 0.5}, default_multiplier=1.0)
        model = dense_model()
        model.compile(optimizer=optimizer, loss="mse")
        x = rng().normal(size=(4, 3)).astype("float32")
        y = rng().normal(size=(4, 2)).astype("float32")
        model.train_on_batch(x, y)  # creates the optimizer's slots

        def probe(m):
            assert type(m.optimizer) is cls
            # One more step: equal only if multipliers, slots and step count came back.
            m.train_on_batch(x, y)
            return [m(x), *[v.numpy() for v in m.optimizer.variables]]

        return optimizer, model, probe

    return factory


def learning_rate_schedule(cls, **kwargs):
    def factory(tmp_path):
        schedule = cls(1e-2, total_steps=10, **kwargs)
        model = dense_model()
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule), loss="mse")

        def probe(m):
            config = m.optimizer.get_config()["learning_rate"]
            assert type(keras.optimizers.schedules.deserialize(config)) is cls
            rates = []
            for step in range(12):
                m.optimizer.iterations.assign(step)
                rates.append(float(m.optimizer.learning_rate))
            m.optimizer.iterations.assign(0)
            return np.array(rates)

        return schedule, model, probe

    return factory


def gradual_unfreezing(tmp_path):
    # A callback: serialised with its config, never stored in a .keras file.
    return callbacks.GradualUnfreezing({1: 1, 3: "all"}, train_bn=True), None, None


def gradient_reversal(tmp_path):
    layer = layers.GradientReversal(0.5)
    model = keras.Sequential([keras.Input((3,)), layer, keras.layers.Dense(2)])
    x = rng().normal(size=(2, 3)).astype("float32")

    def probe(m):
        assert type(m.layers[0]) is layers.GradientReversal and m.layers[0].factor == 0.5
        return m(x)

    return layer, model, probe


def compiled_loss(cls, binary_labels=False, **kwargs):
    def factory(tmp_path):
        loss = cls(**kwargs)
        model = dense_model()
        model.compile(optimizer="sgd", loss=loss)
        source = rng(1).normal(size=(6, 2)).astype("float32")
        if binary_labels:
            source = (source > 0).astype("float32")
        target = rng(2).normal(1.0, 2.0, size=(6, 2)).astype("float32")

        def probe(m):
            # The reloaded compiled loss is the same class and computes the same value.
            restored = keras.losses.deserialize(keras.losses.serialize(m.loss))
            assert type(restored) is cls
            return restored(source, target)

        return loss, model, probe

    return factory


def soft_label_accuracy(tmp_path):
    metric = heads.SoftLabelAccuracy()
    model = dense_model()
    model.compile(optimizer="sgd", loss="mse", metrics=[metric])
    soft = np.array([[0.7, 0.3], [0.2, 0.8], [0.4, 0.6]], "float32")
    predicted = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]], "float32")

    def probe(m):
        # The reloaded compiled metric is the same class and scores the same batch alike.
        config = m.get_compile_config()["metrics"][0]
        restored = keras.metrics.deserialize(config)
        assert type(restored) is heads.SoftLabelAccuracy
        restored.update_state(soft, predicted)
        return restored.result()

    return metric, model, probe


def domain_adaptation(tmp_path):
    # A training wrapper (fit_domain_adaptation): its config round-trips; the model users
    # save afterwards is the plain classifier, covered by TransferClassifier above.
    classifier = make_tiny_classifier(2)
    return domain.DomainAdaptation(classifier, method="mmd", total_steps=4), None, None


def prototype_head(tmp_path):
    x = rng().normal(size=(6, 5)).astype("float32")
    head = few_shot.prototype_head_from_features(x, [0, 0, 1, 1, 2, 2], temperature=0.2)
    model = keras.Sequential([keras.Input((5,)), head])

    def probe(m):
        # The class means and the centre come back from the file (they are not in the config).
        assert type(m.layers[0]) is few_shot.PrototypeHead and m.layers[0].temperature == 0.2
        return m(x)

    return head, model, probe


def zero_shot_text_classifier(tmp_path):
    preset = write_tiny_bert_preset(tmp_path / "tiny_bert")
    model = keras_transfer.zero_shot_text_classifier(
        preset, {"spam": "win a free prize", "ham": "see you at home"}, sequence_length=16
    )
    texts = ["claim cash now", "dinner tonight"]

    def probe(m):
        assert type(m) is keras_transfer.ZeroShotTextClassifier
        assert m.class_names == ["spam", "ham"] and m.temperature == 0.1
        return m.predict(texts, verbose=0)  # raw strings, through the saved preprocessor

    return model, model, probe


FACTORIES = {
    "BinaryLabelCrossentropy": compiled_loss(
        heads.BinaryLabelCrossentropy, binary_labels=True, from_logits=True
    ),
    "SoftLabelCrossentropy": compiled_loss(
        heads.SoftLabelCrossentropy, label_smoothing=0.1, from_logits=True
    ),
    "SoftLabelAccuracy": soft_label_accuracy,
    "GradientReversal": gradient_reversal,
    "CoralLoss": compiled_loss(losses.CoralLoss),
    "PredictionEntropy": compiled_loss(losses.PredictionEntropy, from_logits=True),
    "MMDLoss": compiled_loss(losses.MMDLoss, kernel_multipliers=(0.5, 1.0)),
    "MinimumClassConfusion": compiled_loss(losses.MinimumClassConfusion, temperature=2.0),
    # Without the pseudo-label term the probe's float targets are not read as labels.
    "InformationMaximization": compiled_loss(
        losses.InformationMaximization, pseudo_label_weight=0.0, diversity_weight=0.5
    ),
    "DomainAdaptation": domain_adaptation,
    "DannLearningRate": learning_rate_schedule(domain.DannLearningRate),
    "ClassificationHead": classification_head,
    "ZeroShotHead": zero_shot_head,
    "PrototypeHead": prototype_head,
    "ZeroShotTextClassifier": zero_shot_text_classifier,
    "MultiTaskHead": multi_task_head,
    "ProbabilitiesToLogits": probabilities_to_logits,
    "TransferClassifier": transfer_classifier,
    "ImagePreprocessing": image_preprocessing,
    "HubBackbone": hub_backbone,
    "TokenPooling": token_pooling,
    "L2SP": l2sp,
    "GradualUnfreezing": gradual_unfreezing,
    "WarmupCosineDecay": learning_rate_schedule(
        schedules.WarmupCosineDecay, warmup_steps=3, floor=1e-4
    ),
    "SlantedTriangular": learning_rate_schedule(schedules.SlantedTriangular),
    "OneCycle": learning_rate_schedule(schedules.OneCycle),
    # One factory for the per-layer learning-rate variants of every Keras optimizer.
    **{
        name[len(PREFIX) :]: layerwise_optimizer(cls)
        for name, cls in REGISTERED.items()
        if issubclass(cls, optimizers.LayerwiseLearningRate)
    },
}


def test_every_registered_class_has_a_factory():
    names = {name[len(PREFIX) :] for name in REGISTERED}
    missing = sorted(names - set(FACTORIES))
    assert not missing, (
        f"Registered keras_transfer classes without a serialization factory: {missing}. "
        "Add one to FACTORIES in tests/test_serialization.py."
    )
    assert len(names) >= 21  # the registry was read (a vacuous pass is a failure too)


def test_multi_task_classifier_round_trip(tmp_path):
    model, _, probe = multi_task_classifier(tmp_path)
    run_model_saving_test(model, probe, tmp_path)


# TensorFlow programs by nature (a TF Hub SavedModel; a tf.GradientTape training step; a
# trainable set that grows inside one fit): on another backend they stop with BackendError,
# checked below.
TENSORFLOW_ONLY = {
    "HubBackbone": hub_backbone,
    "DomainAdaptation": domain_adaptation,
    "GradualUnfreezing": gradual_unfreezing,
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.tensorflow_only)
        if name[len(PREFIX) :] in TENSORFLOW_ONLY
        else name
        for name in sorted(REGISTERED)
    ],
)
def test_round_trip(name, tmp_path):
    cls = REGISTERED[name]
    factory = FACTORIES.get(name[len(PREFIX) :])
    if factory is None:
        pytest.fail(f"{name} has no factory in FACTORIES (see the test above).")
    instance, model, probe = factory(tmp_path)
    assert type(instance) is cls
    run_serialization_test(instance)
    if model is not None:
        run_model_saving_test(model, probe, tmp_path)


@pytest.mark.jax_only
@pytest.mark.parametrize("name", sorted(TENSORFLOW_ONLY))
def test_tensorflow_only_classes_stop_with_a_backend_error(name, tmp_path):
    with pytest.raises(
        keras_transfer.BackendError,
        match=f"needs the TensorFlow backend, but Keras runs on '{keras.backend.backend()}'",
    ):
        TENSORFLOW_ONLY[name](tmp_path)
