"""Knowledge distillation (`kt.distill`) on Keras' own Distiller, checked by hand."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import load_benchmark
from conftest import tiny_images

import keras_transfer as kt
from keras_transfer.distillation import distiller as distillation

RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 4)).astype("float32")
Y = np.array([0, 1, 2, 0, 1, 2, 0, 1], "int32")


def dense_classifier(seed, activation="softmax", units=3, name=None):
    """Input(4) -> Dense(units, activation) with fixed random weights: logits known by hand."""
    rng = np.random.default_rng(seed)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(units, activation=activation)], name=name
    )
    kernel = rng.normal(scale=2.0, size=(4, units)).astype("float32")
    bias = rng.normal(size=(units,)).astype("float32")
    model.layers[0].set_weights([kernel, bias])
    return model, kernel, bias


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def kd_term(teacher_logits, student_logits, temperature):
    """T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), batch mean (Hinton et al. 2015)."""
    p = softmax(teacher_logits / temperature)
    q = softmax(student_logits / temperature)
    return temperature**2 * np.mean(np.sum(p * np.log(p / q), axis=-1))


def first_step_loss(teacher, student, alpha, temperature, **kwargs):
    """The loss of `distill` on the one batch of (X, Y), before any update: with one batch
    per epoch, the logged training loss is computed with the initial weights."""
    history = keras.callbacks.History()
    data = tf.data.Dataset.from_tensor_slices((X, Y)).batch(8)
    kt.distill(
        teacher,
        student,
        data,
        temperature=temperature,
        alpha=alpha,
        epochs=1,
        optimizer="sgd",
        learning_rate=1e-9,
        callbacks=[history],
        verbose=0,
        **kwargs,
    )
    return history.history


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_loss_is_labels_and_teacher_terms_on_logits(temperature):
    teacher, t_kernel, t_bias = dense_classifier(1)
    student, s_kernel, s_bias = dense_classifier(2)
    z_teacher, z_student = X @ t_kernel + t_bias, X @ s_kernel + s_bias
    p_student = softmax(z_student)
    labels_term = -np.mean(np.log(p_student[np.arange(8), Y]))
    teacher_term = kd_term(z_teacher, z_student, temperature)
    # Dividing probabilities (not logits) by T would give a different, wrong number.
    wrong = kd_term(softmax(z_teacher), p_student, temperature)
    assert abs(wrong - teacher_term) > 0.05

    logs = first_step_loss(teacher, student, alpha=1.0, temperature=temperature)
    np.testing.assert_allclose(logs["loss"][0], labels_term, rtol=1e-4)
    logs = first_step_loss(teacher, student, alpha=0.0, temperature=temperature)
    np.testing.assert_allclose(logs["loss"][0], teacher_term, rtol=1e-4)
    np.testing.assert_allclose(logs["distillation_loss"][0], teacher_term, rtol=1e-4)
    logs = first_step_loss(teacher, student, alpha=0.3, temperature=temperature)
    np.testing.assert_allclose(logs["loss"][0], 0.3 * labels_term + 0.7 * teacher_term, rtol=1e-4)
    # The same numbers when the teacher's outputs are computed once and cached.
    logs = first_step_loss(teacher, student, 0.3, temperature, cache_teacher=True)
    np.testing.assert_allclose(logs["loss"][0], 0.3 * labels_term + 0.7 * teacher_term, rtol=1e-4)


def test_logit_outputs_and_sigmoid_outputs():
    # A teacher that outputs logits gives the same teacher term as its softmax twin.
    teacher, t_kernel, t_bias = dense_classifier(1, activation=None)
    student, s_kernel, s_bias = dense_classifier(2)
    expected = kd_term(X @ t_kernel + t_bias, X @ s_kernel + s_bias, 2.0)
    logs = first_step_loss(teacher, student, alpha=0.0, temperature=2.0)
    np.testing.assert_allclose(logs["loss"][0], expected, rtol=1e-4)
    # One sigmoid unit: the two-class distribution [1 - p, p], i.e. logits [0, z].
    teacher, t_kernel, t_bias = dense_classifier(3, activation="sigmoid", units=1)
    student, s_kernel, s_bias = dense_classifier(4, activation="sigmoid", units=1)

    def two_class(z):
        return np.concatenate([np.zeros_like(z), z], axis=-1)

    expected = kd_term(two_class(X @ t_kernel + t_bias), two_class(X @ s_kernel + s_bias), 2.0)
    history = keras.callbacks.History()
    data = tf.data.Dataset.from_tensor_slices((X, (Y > 0).astype("float32"))).batch(8)
    kt.distill(
        teacher, student, data, temperature=2.0, alpha=0.0, epochs=1, optimizer="sgd",
        learning_rate=1e-9, callbacks=[history], verbose=0,
    )  # fmt: skip
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-4)


def test_probabilities_to_logits_layer():
    p = np.array([[0.7, 0.2, 0.1]], "float32")
    logits = distillation.ProbabilitiesToLogits("multiclass")(p)
    np.testing.assert_allclose(keras.ops.softmax(logits / 3.0), softmax(np.log(p) / 3.0), 1e-6)
    two = distillation.ProbabilitiesToLogits("multilabel")(np.array([[0.9, 0.2]], "float32"))
    assert tuple(two.shape) == (1, 2, 2)
    np.testing.assert_allclose(keras.ops.softmax(two)[0, :, 1], [0.9, 0.2], rtol=1e-5)


def test_student_trains_teacher_stays_frozen_and_student_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    # A cheap teacher on the same images (the Distiller's train step traces both models).
    teacher = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, activation="relu", name="hidden"),
            keras.layers.Dense(2, activation="softmax", name="out"),
        ]
    )
    teacher.get_layer("hidden").trainable = False  # a mixed state, restored as it was
    flags = {layer.name: layer.trainable for layer in teacher.layers}
    teacher_before = [w.numpy().copy() for w in teacher.weights]
    # A small convolutional student (a MobileNet one costs a minute of tracing on 2 cores).
    student = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 127.5, offset=-1.0),
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ],
        name="student",
    )
    student_before = [w.numpy().copy() for w in student.trainable_weights]
    data = tf.data.Dataset.from_tensor_slices((tiny_images(8), np.arange(8) % 2)).batch(4)
    returned = kt.distill(teacher, student, data, epochs=1, verbose=0)
    assert returned is student
    for before, variable in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(before, variable.numpy())
    assert {layer.name: layer.trainable for layer in teacher.layers} == flags
    assert any(
        not np.array_equal(b, v.numpy()) for b, v in zip(student_before, student.trainable_weights)
    )
    # A plain classifier again: raw images in, probabilities out, saved like any other.
    path = tmp_path / "student.keras"
    student.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded, keras.Sequential)
    np.testing.assert_allclose(
        reloaded.predict(tiny_images(3), verbose=0), student.predict(tiny_images(3), verbose=0)
    )


def test_bad_input():
    teacher, _, _ = dense_classifier(1)
    data = tf.data.Dataset.from_tensor_slices((X, Y)).batch(8)
    two_classes, _, _ = dense_classifier(2, units=2)
    with pytest.raises(ValueError, match="teacher predicts 3 outputs .* student 2"):
        kt.distill(teacher, two_classes, data)
    student, _, _ = dense_classifier(2)
    for alpha in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="alpha must be a number in"):
            kt.distill(teacher, student, data, alpha=alpha)
    for temperature in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be a number in"):
            kt.distill(teacher, student, data, temperature=temperature)
    other_inputs = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, "softmax")])
    with pytest.raises(ValueError, match="different inputs"):
        kt.distill(teacher, other_inputs, data)
    regression = kt.create_classifier(
        "mobilenet", 1, head={"task": "regression"}, input_shape=(32, 32, 3), weights=None
    )
    with pytest.raises(ValueError, match="FeatureDistillation"):
        kt.distill(regression, regression, data)


def test_missing_keras_distillation_names_the_version(monkeypatch):
    monkeypatch.delattr(keras, "distillation")
    teacher, _, _ = dense_classifier(1)
    with pytest.raises(ImportError, match=r"Keras 3\.12 or newer"):
        kt.distill(teacher, teacher, tf.data.Dataset.from_tensor_slices((X, Y)).batch(8))


def test_benchmark_teacher_cache_trains_once_then_reuses_the_saved_teacher(tmp_path):
    script = load_benchmark("distillation")
    trained = []

    def train():
        teacher, _, _ = dense_classifier(len(trained) + 1)
        trained.append(teacher)
        return teacher

    first, from_cache, _ = script.teacher_from_cache(str(tmp_path), "task_seed1", train)
    assert (first, from_cache) == (trained[0], False)
    assert (tmp_path / "task_seed1.keras").exists()
    second, from_cache, _ = script.teacher_from_cache(str(tmp_path), "task_seed1", train)
    assert from_cache and len(trained) == 1  # not trained again
    np.testing.assert_allclose(second.predict(X, verbose=0), first.predict(X, verbose=0))
    # Another key (another seed or schedule) is another teacher; no folder: train every run.
    script.teacher_from_cache(str(tmp_path), "task_seed2", train)
    script.teacher_from_cache(None, "task_seed1", train)
    assert len(trained) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task_seed1.keras", "task_seed2.keras"]


@pytest.mark.slow
def test_benchmark_smoke_same_schedule_for_both_students(tmp_path):
    script = load_benchmark("distillation")
    cache = tmp_path / "teachers"
    args = ["--task=images", "--smoke", f"--output_dir={tmp_path}", f"--teacher_cache={cache}"]
    result = script.main([*args, "--tag=patient", "--validation_freq=2"])
    assert result["teacher_from_cache"] is False
    assert [p.name for p in cache.iterdir()] == [
        "images_synthetic_mobilenet64_seed42_head2_all1.keras"
    ]
    saved = json.loads((tmp_path / "distillation_synthetic_patient.json").read_text())
    assert saved == json.loads(json.dumps(result))
    # Both arms: 2 head epochs + 1 all-blocks epoch in one curve, validated at epoch 2 only.
    for arm in ("labels_only", "distilled"):
        curve = result["curves"][arm]
        assert len(curve["accuracy"]) == 3 and curve["val_epochs"] == [2]
    gap = result["teacher_acc"] - result["student_labels_only_acc"]
    gained = result["student_distilled_acc"] - result["student_labels_only_acc"]
    assert result["gap_closed"] == (round(gained / gap, 3) if gap > 0 else None)


def test_benchmark_transfer_set_masks_words_and_keeps_ngrams_as_tang_et_al():
    script = load_benchmark("distillation")
    texts = [" ".join(f"w{i}_{j}" for j in range(20)) for i in range(200)]
    copies = script.augment_texts(texts, copies=3, seed=0)
    assert len(copies) == 600
    assert copies == script.augment_texts(texts, copies=3, seed=0)  # seeded
    words = [copy.split() for copy in copies]
    # Copy k of text i is at k * len(texts) + i, and keeps only that text's words.
    for k in range(3):
        for i in (0, 117):
            assert {w for w in words[k * 200 + i] if w != "[MASK]"} <= set(texts[i].split())
    full = [w for w in words if len(w) == 20]
    ngrams = [w for w in words if len(w) < 20]
    # p_ng = 0.25: about a quarter are one 1-5-gram, in the text's order.
    assert 0.18 < len(ngrams) / len(words) < 0.32
    assert all(1 <= len(w) <= 5 for w in ngrams)
    masked = sum(w == "[MASK]" for copy in full for w in copy) / (20 * len(full))
    assert 0.07 < masked < 0.13  # p_mask = 0.1
    unmasked = [w for w in ngrams if "[MASK]" not in w and len(w) > 1]
    for copy in unmasked:
        first = int(copy[0].split("_")[1])
        assert [int(w.split("_")[1]) for w in copy] == list(range(first, first + len(copy)))
