"""Zero-shot text classification (`kt.zero_shot_text_classifier`) and its few-shot
refinement (`kt.fit_text_prototypes`) on a tiny random BERT preset (`tiny_bert_preset`):
the head starts at the normalised description embeddings, predictions are the softmax of
cosine / temperature, examples move the class vectors by the documented running mean, bad
descriptions are clear errors, and benchmarks/zero_shot_text.py --smoke prints its keys."""

import json
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import load_benchmark

import keras_transfer as kt

keras_hub = pytest.importorskip("keras_hub", reason="needs the text extra (keras-hub)")

from keras_transfer.apps import text_classifier as text_lib  # noqa: E402
from keras_transfer.apps import zero_shot_text  # noqa: E402

SEQUENCE_LENGTH = 16
DESCRIPTIONS = {
    "spam": "win a free cash prize now",
    "ham": "see you at home for dinner",
    "weather": "the red sky",
}
TEXTS = ["claim free cash now", "see you later mum", "blue sky", "win prize", "dinner tonight"]


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_embeddings(preset, texts):
    """Mean-pooled sequence outputs computed outside the classifier: a fresh copy of the
    preset's encoder, its tokenizer, and the masked mean in NumPy."""
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    tokens = text_lib.build_preprocessor(preset, SEQUENCE_LENGTH)(tf.constant(texts))
    sequence = keras.ops.convert_to_numpy(backbone(tokens)["sequence_output"])
    mask = keras.ops.convert_to_numpy(tokens["padding_mask"]).astype("float64")[..., None]
    return (sequence * mask).sum(axis=1) / mask.sum(axis=1)


def classifier(preset, descriptions=None, **kwargs):
    return kt.zero_shot_text_classifier(
        preset, descriptions or DESCRIPTIONS, sequence_length=SEQUENCE_LENGTH, **kwargs
    )


def test_head_starts_at_the_normalised_description_embeddings(tiny_bert_preset):
    model = classifier(tiny_bert_preset, temperature=0.05)
    assert isinstance(model, kt.ZeroShotTextClassifier)
    assert model.class_names == ["spam", "ham", "weather"]
    expected = unit(reference_embeddings(tiny_bert_preset, list(DESCRIPTIONS.values())))
    kernel, bias = model.head.dense.get_weights()
    # A trainable dense layer at normalised descriptions / temperature, bias 0.
    np.testing.assert_allclose(kernel * 0.05, expected.T, atol=1e-5)
    np.testing.assert_array_equal(bias, np.zeros(3))
    assert {v.path.split("/")[-1] for v in model.head.trainable_variables} == {"kernel", "bias"}
    means = keras.ops.convert_to_numpy(model.head.class_means)
    np.testing.assert_allclose(means, expected, atol=1e-5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.head.centre), np.zeros(16))


def test_prediction_is_the_softmax_of_cosine_over_temperature(tiny_bert_preset):
    model = classifier(tiny_bert_preset, temperature=0.05)
    descriptions = unit(reference_embeddings(tiny_bert_preset, list(DESCRIPTIONS.values())))
    texts = reference_embeddings(tiny_bert_preset, TEXTS)
    np.testing.assert_allclose(zero_shot_text.embed_texts(model, TEXTS), texts, atol=1e-5)
    cosine = unit(texts) @ descriptions.T
    probabilities = model.predict(TEXTS, verbose=0)  # raw strings in
    expected = np.exp(cosine / 0.05) / np.exp(cosine / 0.05).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    np.testing.assert_array_equal(probabilities.argmax(axis=-1), cosine.argmax(axis=-1))


def test_several_descriptions_of_a_label_average_their_normalised_embeddings(tiny_bert_preset):
    sentences = ["win a free cash prize now", "call now to claim"]
    model = classifier(tiny_bert_preset, {"spam": sentences, "ham": "see you at home"})
    spam = unit(unit(reference_embeddings(tiny_bert_preset, sentences)).mean(axis=0))
    means = keras.ops.convert_to_numpy(model.head.class_means)
    np.testing.assert_allclose(means[0], spam, atol=1e-5)


def test_examples_move_the_class_vectors_by_the_running_mean(tiny_bert_preset):
    descriptions = {"spam": DESCRIPTIONS["spam"], "ham": DESCRIPTIONS["ham"]}
    model = classifier(tiny_bert_preset, descriptions, temperature=0.1)
    examples = {"spam": ["claim cash now", "free prize text now"], "ham": ["see you tonight"]}
    refined = kt.fit_text_prototypes(model, examples)
    d = unit(reference_embeddings(tiny_bert_preset, list(descriptions.values())))
    e = unit(reference_embeddings(tiny_bert_preset, examples["spam"] + examples["ham"]))
    # The description counts as one example (description_weight=1).
    expected = np.stack([(d[0] + e[0] + e[1]) / 3, (d[1] + e[2]) / 2])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(refined.head.class_means), expected, atol=1e-5
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(refined.head.class_counts), [3, 2])
    kernel, _ = refined.head.dense.get_weights()
    np.testing.assert_allclose(kernel * 0.1, unit(expected).T, atol=1e-5)
    # Closer to the examples' prototype than the description was.
    prototype = unit(e[:2].mean(axis=0))
    assert unit(expected[0]) @ prototype > d[0] @ prototype
    # The model it came from is unchanged; later examples merge into the same mean.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.head.class_means), d, atol=1e-5)
    again = kt.fit_text_prototypes(refined, {"ham": ["mum at home"]})
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again.head.class_counts), [3, 3])
    # Scoring raw strings goes through the refined head.
    cosine = unit(reference_embeddings(tiny_bert_preset, TEXTS)) @ unit(expected).T
    np.testing.assert_array_equal(
        refined.predict(TEXTS, verbose=0).argmax(axis=-1), cosine.argmax(axis=-1)
    )


def test_description_weight_zero_gives_the_examples_prototypes(tiny_bert_preset):
    descriptions = {"spam": DESCRIPTIONS["spam"], "ham": DESCRIPTIONS["ham"]}
    model = classifier(tiny_bert_preset, descriptions, description_weight=0.0)
    x = zero_shot_text.embed_texts(model, ["claim cash now", "free prize", "see you tonight"])
    head = zero_shot_text.refine_class_vectors(model.head, x, [0, 0, 1])
    prototypes = keras.ops.convert_to_numpy(head.prototypes())
    np.testing.assert_allclose(prototypes[0], unit(unit(x[:2]).mean(axis=0)), atol=1e-5)
    np.testing.assert_allclose(prototypes[1], unit(x[2]), atol=1e-5)


def test_refine_epochs_train_the_dense_layer_from_the_merged_vectors(tiny_bert_preset):
    descriptions = {"spam": DESCRIPTIONS["spam"], "ham": DESCRIPTIONS["ham"]}
    model = classifier(tiny_bert_preset, descriptions)
    x = zero_shot_text.embed_texts(model, ["claim cash now", "free prize", "see you", "mum"])
    merged = zero_shot_text.refine_class_vectors(model.head, x, [0, 0, 1, 1])
    trained = zero_shot_text.refine_class_vectors(
        model.head, x, [0, 0, 1, 1], refine_epochs=5, learning_rate=1e-2
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(trained.class_means),
        keras.ops.convert_to_numpy(merged.class_means),
    )
    moved = np.abs(trained.dense.get_weights()[0] - merged.dense.get_weights()[0]).max()
    assert moved > 1e-3


def test_the_model_fine_tunes_and_round_trips(tiny_bert_preset, tmp_path):
    model = classifier(tiny_bert_preset)
    before = model.head.dense.get_weights()[0].copy()
    model.fit(x=TEXTS, y=np.array([0, 1, 2, 0, 1]), batch_size=5, epochs=1, verbose=0)
    assert np.abs(model.head.dense.get_weights()[0] - before).max() > 0
    kt.save_model(model, tmp_path / "zero_shot.keras")
    loaded = kt.load_model(tmp_path / "zero_shot.keras")
    assert type(loaded) is kt.ZeroShotTextClassifier and loaded.class_names == model.class_names
    np.testing.assert_allclose(
        loaded.predict(TEXTS, verbose=0), model.predict(TEXTS, verbose=0), atol=1e-5
    )


def test_load_model_in_a_fresh_process_imports_the_class(tiny_bert_preset, tmp_path):
    path = tmp_path / "zero_shot.keras"
    kt.save_model(classifier(tiny_bert_preset), path)
    script = (
        "import keras_transfer as kt\n"
        f"model = kt.load_model({str(path)!r})\n"
        "print(type(model).__name__, model.class_names)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last == "ZeroShotTextClassifier ['spam', 'ham', 'weather']"


@pytest.mark.parametrize(
    ("descriptions", "error", "message"),
    [
        ({}, ValueError, "0 label.*at least 2"),
        ({"spam": "free cash"}, ValueError, "1 label.*at least 2"),
        ([("spam", "free cash"), ("spam", "prize")], ValueError, r"\['spam'\].*more than once"),
        ({1: "free cash", "1": "see you"}, ValueError, r"\['1'\].*more than once"),
        ({"spam": "", "ham": "see you"}, ValueError, "'spam' has no description"),
        ({"spam": "See you", "ham": "see  you"}, ValueError, "share the description"),
        ("spam: free cash", TypeError, "must be a dict"),
    ],
)
def test_bad_descriptions_are_clear_errors(descriptions, error, message):
    # Checked before any encoder is loaded (the preset does not exist).
    with pytest.raises(error, match=message):
        kt.zero_shot_text_classifier("/no/such/preset", descriptions)


def test_bad_encoder_temperature_and_examples_are_clear_errors(tiny_bert_preset):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        kt.zero_shot_text_classifier(tiny_bert_preset, DESCRIPTIONS, temperature=0)
    with pytest.raises(TypeError, match="not a KerasHub text backbone"):
        kt.zero_shot_text_classifier((keras.Sequential(), None), DESCRIPTIONS)
    model = classifier(tiny_bert_preset)
    with pytest.raises(ValueError, match=r"\['nope'\] are not classes of the model"):
        kt.fit_text_prototypes(model, {"nope": ["free cash"]})
    with pytest.raises(ValueError, match="non-empty dict"):
        kt.fit_text_prototypes(model, {})


@pytest.mark.slow  # about a minute: three models of the tiny encoder are traced and trained
def test_benchmark_smoke_prints_the_summary_keys_and_writes_the_results(capsys):
    summary = load_benchmark("zero_shot_text").main(["--smoke"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == summary
    assert set(summary) == {"zero_shot_macro_f1", "shots", "fine_tuned_macro_f1"}
    assert set(summary["shots"]) == {"1", "4", "16"}
    path = pathlib.Path(next(line for line in lines if line.startswith("results: "))[9:])
    assert "benchmarks/results" not in path.as_posix()  # a smoke run writes a temporary file
    record = json.loads(path.read_text())
    assert record["evaluated_on"] == "test" and record["seeds"] == [0]
    arms = record["arms"]
    assert set(arms) == {
        "zero_shot",
        "fine_tuned",
        *(f"{arm}@k={k}" for arm in ("few_shot", "examples_only") for k in (1, 4, 16)),
    }
    assert summary["zero_shot_macro_f1"] == arms["zero_shot"]["test_macro_f1"]["mean"]
    assert summary["shots"]["4"] == arms["few_shot@k=4"]["test_macro_f1"]["mean"]
    assert summary["fine_tuned_macro_f1"] == arms["fine_tuned"]["test_macro_f1"]["mean"]
    assert len(record["details"]["shot_indices"]["0"]["16"]) == 32  # 16 per class
    assert record["details"]["summary"] == summary  # the keys, in the file too
