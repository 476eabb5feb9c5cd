"""The main example end to end: its `_lib` on a generated image folder, and the binary's
flags in a subprocess."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import tiny_run_settings
from interruption import InterruptAt

import keras_transfer as kt
from keras_transfer.apps import image_classifier as image_classifier_lib
from keras_transfer.apps import image_config
from keras_transfer.apps import image_plan
from keras_transfer.apps import image_reports
from keras_transfer.apps.config import ConfigError
from keras_transfer.data import folders as data
from keras_transfer.diagnostics import reports
from keras_transfer.utils import reliability

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "image_classifier.py")


def _config(data_dir, model_dir, **overrides):
    # The tiny run with two head epochs, batches of 8, and the command's own validation
    # split and augmentation.
    defaults = {"batch_size": 8, "head_epochs": 2, "validation_split": 0.2, "augment": "flip,crop"}
    settings = tiny_run_settings(data_dir, model_dir, **{**defaults, **overrides})
    return image_config.Config(**settings)


def test_run_writes_model_labels_and_results(image_folder, tmp_path):
    image_folder({"cats": 6, "dogs": 5}, subdir="train")
    image_folder({"cats": 3, "dogs": 2}, subdir="test", seed=1)
    root = image_folder({"cats": 3, "dogs": 3}, subdir="val").parent
    model_dir = tmp_path / "out"
    results = image_classifier_lib.run(_config(root, model_dir))

    written = set(os.listdir(model_dir))
    assert {"labels.txt", "model.keras", "results.json", "config.json"} <= written
    assert "backup" not in written or not os.listdir(model_dir / "backup")
    assert (model_dir / "labels.txt").read_text().split() == ["cats", "dogs"]
    on_disk = json.loads((model_dir / "results.json").read_text())
    assert on_disk == results
    history = on_disk["history"]
    for phase, epochs in (("feature_extraction", 2), ("fine_tune", 1)):
        # Each phase's summary is its last epoch's metrics.
        last = max(i for i, name in enumerate(history["phase"]) if name == phase)
        assert on_disk[phase]["val_accuracy"] == history["val_accuracy"][last]
        assert on_disk[phase]["seconds"] > 0
        assert on_disk[phase]["epochs"] == epochs
    assert on_disk["unfrozen_blocks"] == ["conv_dw_12", "conv_dw_13"]
    assert (on_disk["num_train"], on_disk["num_validation"]) == (11, 6)
    assert on_disk["config"]["backbone"] == "mobilenet"

    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
    assert model.class_names == ["cats", "dogs"]
    # The saved model takes raw images and reproduces the reported validation accuracy.
    # An inference file: no optimizer state, so it reloads uncompiled.
    assert not model.compiled
    model.compile(**kt.heads.resolve_loss_and_metrics(model, "auto", "auto"))
    loaded = data.image_folder_dataset(root, image_size=32, batch_size=8)
    _, accuracy = model.evaluate(loaded.validation, verbose=0)
    assert accuracy == pytest.approx(on_disk["fine_tune"]["val_accuracy"], abs=1e-6)
    # The test/ folder beside train/ is evaluated once, on the saved model, at the end.
    test = on_disk["test"]
    assert on_disk["num_test"] == test["num_images"] == 5
    _, test_accuracy = model.evaluate(loaded.test, verbose=0)
    assert test["accuracy"] == pytest.approx(test_accuracy, abs=1e-6)
    correct = round(test["accuracy"] * 5)
    assert test["accuracy_ci95"] == list(reports.wilson_interval(correct, 5))
    assert sum(row["support"] for row in test["per_class"].values()) == 5
    text = image_reports.summary(on_disk, _config(root, model_dir))
    low, high = test["accuracy_ci95"]
    assert "test set, 5 images never seen before, evaluated once:" in text.splitlines()
    assert f"accuracy {correct / 5:.4f} (95% interval {low:.4f}-{high:.4f})" in text
    assert "optimistic" not in text


def test_run_carves_a_validation_split(image_folder, tmp_path):
    root = image_folder({"a": 8, "b": 7, "c": 5})
    results = image_classifier_lib.run(
        _config(root, tmp_path / "out", validation_split=0.25, fine_tune_epochs=0, augment="")
    )
    # Stratified: every class has validation images (a hash, not a count, picks them).
    assert (results["num_train"], results["num_validation"]) == (16, 4)
    assert min(r["support"] for r in results["validation_report"]["per_class"].values()) >= 1
    assert results["fine_tune"] == {}
    assert results["class_names"] == ["a", "b", "c"]
    # No test set: the summary says the validation accuracy is optimistic, in one line.
    assert "test" not in results
    text = image_reports.summary(results, _config(root, tmp_path / "out"))
    assert (
        "no test set: the validation accuracy chose the epoch (and the plan), so it is "
        "optimistic; --test_split or --test_dir gives an estimate of new images."
    ) in text.splitlines()


def test_binary_flags_and_main(image_folder, tmp_path):
    root = image_folder({"x": 4, "y": 4})
    model_dir = tmp_path / "out"
    completed = subprocess.run(
        [
            sys.executable,
            EXAMPLE,
            f"--data_dir={root}",
            f"--model_dir={model_dir}",
            "--backbone=mobilenet",
            "--weights=none",
            "--image_size=32",
            "--batch_size=4",
            "--head_epochs=1",
            "--fine_tune_epochs=1",
            "--unfreeze_blocks=1",
            "--validation_split=0.25",
            "--verbose=0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "phase 1/2 (head): val_accuracy " in completed.stdout
    assert "phase 2/2 (fine-tuning): val_accuracy " in completed.stdout
    results = json.loads((model_dir / "results.json").read_text())
    assert results["config"]["weights"] == "none"
    # Flags given win over the advisor's plan, which fills in the rest.
    assert results["plan"]["given"] == ["head_epochs", "fine_tune_epochs", "unfreeze_blocks"]
    assert results["config"]["head_epochs"] == 1
    assert results["config"]["fine_tune_lr"] == image_config.FIXED_DEFAULTS["fine_tune_lr"]
    assert "plan (auto; given: head_epochs, fine_tune_epochs, unfreeze_blocks)" in completed.stdout


def test_binary_usage_errors_exit_2_with_one_line(
    image_folder, tmp_path, run_binaries, assert_one_line_error
):
    root = image_folder({"x": 2, "y": 2})
    results = run_binaries(
        EXAMPLE,
        {
            "bad value": (
                [f"--data_dir={root}", f"--model_dir={tmp_path / 'out'}", "--head_epochs=ten"],
                {},
            ),
            "no model_dir": ([f"--data_dir={root}"], {}),
            # Values that parse but cannot be used are usage errors too.
            "negative epochs": (
                [f"--data_dir={root}", f"--model_dir={tmp_path / 'out'}", "--head_epochs=-1"],
                {},
            ),
            "tiny image": (
                [f"--data_dir={root}", f"--model_dir={tmp_path / 'out'}", "--image_size=16"],
                {},
            ),
            "unknown backbone": (
                [f"--data_dir={root}", f"--model_dir={tmp_path / 'out'}", "--backbone=mobilenett"],
                {},
            ),
        },
    )
    assert_one_line_error("bad value", results["bad value"], 2, says="--head_epochs=ten")
    assert_one_line_error("no model_dir", results["no model_dir"], 2, says="--model_dir")
    assert_one_line_error("negative epochs", results["negative epochs"], 2, says="head_epochs")
    assert_one_line_error("tiny image", results["tiny image"], 2, says="--image_size=32 or more")
    assert_one_line_error(
        "unknown backbone", results["unknown backbone"], 2, says="Did you mean: mobilenet"
    )
    assert not (tmp_path / "out").exists()


def test_stray_arguments_are_usage_errors(capsys):
    from keras_transfer.apps import cli

    def main(argv):
        raise AssertionError("main must not run")

    # `--verbose 1` used to set the level; now `--verbose` alone is 3 and "1" is left over.
    with pytest.raises(SystemExit) as exit_info:
        cli.guarded(main, {})(["image_classifier.py", "1"])
    assert exit_info.value.code == 2
    error, hint = capsys.readouterr().err.splitlines()
    assert "unexpected argument(s) '1': write flags as --name=value" in error
    assert hint.startswith("  hint: ")


def test_binary_errors_exit_1_with_one_line_and_no_model_dir(
    image_folder, tmp_path, run_binaries, assert_one_line_error
):
    root = image_folder({"x": 2, "y": 2})
    (tmp_path / "empty").mkdir()
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text(f"data_dir: {root}\nhead_lrr: 0.1\n")
    tiny = ["--backbone=mobilenet", "--image_size=32", "--weights=none"]
    results = run_binaries(
        EXAMPLE,
        {
            "missing weights": (
                [f"--data_dir={root}", f"--model_dir={tmp_path / 'a'}", "--weights=nope.h5"],
                {},
            ),
            "bad config": ([f"--config={bad_config}", f"--model_dir={tmp_path / 'b'}"], {}),
            "no classes": (
                [f"--data_dir={tmp_path / 'empty'}", f"--model_dir={tmp_path / 'c'}", *tiny],
                {},
            ),
        },
    )
    # The weights error talks about the flag, not the library call behind it.
    assert_one_line_error("missing weights", results["missing weights"], 1, says="(--weights)")
    assert "create_backbone" not in results["missing weights"][1]
    assert_one_line_error("bad config", results["bad config"], 2, says="did you mean 'head_lr'")
    # A runtime error after the backbone was built.
    assert_one_line_error("no classes", results["no classes"], 1, says="No class folders")
    assert "--verbose" in results["no classes"][2][1]
    for name in "abc":
        assert not (tmp_path / name).exists()


def test_binary_shows_the_traceback_on_request(tmp_path, run_binaries):
    (tmp_path / "empty").mkdir()
    args = [f"--data_dir={tmp_path / 'empty'}"]
    args += ["--backbone=mobilenet", "--image_size=32", "--weights=none"]
    # One model_dir each: the two run at once, and a second run into a folder is refused.
    results = run_binaries(
        EXAMPLE,
        {
            "--verbose": ([*args, f"--model_dir={tmp_path / 'a'}", "--verbose"], {}),
            "KERAS_TRANSFER_DEBUG": (
                [*args, f"--model_dir={tmp_path / 'b'}"],
                {"KERAS_TRANSFER_DEBUG": "1"},
            ),
        },
    )
    for name, (returncode, stderr, lines) in results.items():
        assert returncode == 1, (name, stderr[-2000:])
        assert "Traceback (most recent call last)" in stderr, name
        assert "apps/image_classifier.py" in stderr, name  # where it came from
        assert lines[-1].startswith("image_classifier.py: error: No class folders"), name


def test_unknown_backbone_fails_before_loading_data(tmp_path):
    (tmp_path / "empty").mkdir()  # loading it would fail: no class folders
    with pytest.raises(ValueError, match="Did you mean"):
        image_classifier_lib.run(
            _config(tmp_path / "empty", tmp_path / "out", backbone="mobilenet_v")
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_saved_model_and_tflite_match_keras(image_folder, tmp_path):
    import tensorflow as tf

    root = image_folder({"cats": 6, "dogs": 6})
    model_dir = tmp_path / "out"
    results = image_classifier_lib.run(
        _config(
            root,
            model_dir,
            head_epochs=1,
            fine_tune_epochs=0,
            validation_split=0.25,
            export="saved_model,tflite",
        )
    )
    assert set(results["exports"]) == {"saved_model", "tflite"}
    # Each export is checked as `keras-transfer export` checks it, recorded in export.json.
    record = json.loads((model_dir / "export.json").read_text())["exports"]
    assert set(record) == {"saved_model", "model.tflite"}
    for entry in record.values():
        assert entry["check"]["images"] == results["num_validation"]
        assert entry["check"]["top1_agreement"] == 1.0
        assert entry["model_sha256"] == reliability.file_sha256(model_dir / "model.keras")
    model = keras.saving.load_model(model_dir / "model.keras")
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    expected = model.predict(images, verbose=0)

    served = tf.saved_model.load(str(model_dir / "saved_model"))
    np.testing.assert_allclose(served.serve(images).numpy(), expected, atol=1e-5)

    interpreter = tf.lite.Interpreter(model_path=str(model_dir / "model.tflite"))
    (input_detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(input_detail["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], images)
    interpreter.invoke()
    tflite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(tflite, expected, atol=1e-4)


def test_reports_and_resolved_config(image_folder, tmp_path):
    root = image_folder({"a": 6, "b": 6})
    model_dir = tmp_path / "out"
    results = image_classifier_lib.run(
        _config(root, model_dir, validation_split=0.25, head_epochs=2, fine_tune_epochs=1)
    )
    report = results["validation_report"]
    matrix = np.array(report["confusion_matrix"])
    assert matrix.sum() == results["num_validation"] == 3
    assert report["accuracy"] == pytest.approx(results["fine_tune"]["val_accuracy"], abs=1e-6)
    assert set(report["per_class"]) == {"a", "b"}
    assert results["history"]["phase"] == ["feature_extraction"] * 2 + ["fine_tune"]
    resolved = json.loads((model_dir / "config.json").read_text())
    assert resolved == results["config"]
    assert image_config.load_config(str(model_dir / "config.json"), {}).head_epochs == 2
    if pytest.importorskip("matplotlib"):
        assert (model_dir / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
        assert (model_dir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


class _Recorder(keras.callbacks.Callback):
    """Per training step: the model, its optimizer, the step's learning rate and the
    trainable blocks (after `GradualUnfreezing`, which acts at epoch begin)."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.steps.append(
            {
                "model": self.model,
                "optimizer": optimizer,
                "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
                "trainable_variables": [v.path for v in self.model.trainable_variables],
            }
        )

    def optimizers(self):
        """The optimizers in the order they trained (one per phase)."""
        seen = []
        for step in self.steps:
            if not any(step["optimizer"] is o for o in seen):
                seen.append(step["optimizer"])
        return seen

    def learning_rates(self, optimizer):
        return [s["learning_rate"] for s in self.steps if s["optimizer"] is optimizer]


def _warmup_cosine(peak, steps, warmup=1):
    """The rate of each step of `steps`: linear from 0 over `warmup`, cosine to peak / 100."""
    floor = peak * 0.01
    rates = []
    for t in range(steps):
        if t < warmup:
            rates.append(peak * t / warmup)
        else:
            progress = (t - warmup) / (steps - warmup)
            rates.append(floor + (peak - floor) * (1 + math.cos(math.pi * progress)) / 2)
    return rates


def test_lr_decay_cosine_warmup_and_weight_decay_reach_the_optimizers(image_folder, tmp_path):
    root = image_folder({"a": 6, "b": 6})
    recorder = _Recorder()
    head_lr, fine_tune_lr = 1e-3, 1e-4
    image_classifier_lib.run(
        _config(
            root,
            tmp_path / "out",
            validation_split=0.25,  # 9 training images, 3 steps of 4 per epoch
            batch_size=4,
            head_epochs=1,
            fine_tune_epochs=1,
            unfreeze_blocks="2",
            head_lr=head_lr,
            fine_tune_lr=fine_tune_lr,
            lr_decay=0.5,
            lr_schedule="cosine",
            warmup_steps=1,
            weight_decay=1e-4,
            augment="",
        ),
        callbacks=[recorder],
    )
    head, fine_tune = recorder.optimizers()
    # AdamW with the weight decay in both phases; per-block rates only in fine-tuning.
    for optimizer in (head, fine_tune):
        assert isinstance(optimizer, keras.optimizers.AdamW)
        assert optimizer.weight_decay == pytest.approx(1e-4)
    assert not isinstance(head, kt.optimizers.LayerwiseLearningRate)
    assert isinstance(fine_tune, kt.optimizers.LayerwiseLearningRate)
    model = next(s["model"] for s in recorder.steps if s["optimizer"] is fine_tune)
    block_of = {id(v): b.name for b in kt.get_blocks(model) for v in b.variables}
    multipliers = {}
    for variable, multiplier in zip(
        model.trainable_variables, fine_tune.resolve_multipliers(model.trainable_variables)
    ):
        multipliers.setdefault(block_of.get(id(variable), "head"), set()).add(multiplier)
    # The top block lr * 0.5, the one below lr * 0.25, the head the full rate.
    assert multipliers == {"conv_dw_13": {0.5}, "conv_dw_12": {0.25}, "head": {1.0}}
    # Each phase warms up over 1 step, then decays on a cosine over its own 3 steps.
    np.testing.assert_allclose(recorder.learning_rates(head), _warmup_cosine(head_lr, 3))
    np.testing.assert_allclose(
        recorder.learning_rates(fine_tune), _warmup_cosine(fine_tune_lr, 3), rtol=1e-6
    )


@pytest.mark.tensorflow_only
def test_gradual_unfreezing_follows_the_schedule(image_folder, tmp_path):
    root = image_folder({"a": 6, "b": 6})
    recorder = _Recorder()
    results = image_classifier_lib.run(
        _config(
            root,
            tmp_path / "out",
            validation_split=0.25,
            head_epochs=1,
            fine_tune_epochs=2,
            unfreeze_schedule="1:1,2:3",
            augment="",
        ),
        callbacks=[recorder],
    )
    # One timeline of 3 epochs (2 steps each) and one optimizer at the head's rate.
    assert results["history"]["epoch"] == [1, 2, 3]  # 1-based, as Keras prints them
    (optimizer,) = recorder.optimizers()
    assert float(optimizer.learning_rate) == pytest.approx(1e-3)
    model = recorder.steps[0]["model"]
    block_of = {v.path: b.name for b in kt.get_blocks(model) for v in b.variables}
    trained_blocks = [
        sorted({block_of[p] for p in step["trainable_variables"] if p in block_of})
        for step in recorder.steps[::2]
    ]
    assert trained_blocks == [[], ["conv_dw_13"], ["conv_dw_11", "conv_dw_12", "conv_dw_13"]]
    assert results["unfrozen_blocks"] == ["conv_dw_11", "conv_dw_12", "conv_dw_13"]


class _ScriptedValLoss(keras.callbacks.Callback):
    """Replaces each epoch's `val_loss` with the next value of the current phase's script,
    before the example's `EarlyStopping` (listed after it) reads it."""

    def __init__(self, *phases):
        super().__init__()
        self.phases = [list(p) for p in phases]
        self.phase = -1

    def on_train_begin(self, logs=None):
        self.phase += 1

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.phases[self.phase].pop(0)


def test_early_stopping_stops_each_phase_after_patience_epochs_without_improvement(
    image_folder, tmp_path
):
    root = image_folder({"a": 6, "b": 6})
    script = _ScriptedValLoss([1.0, 0.9, 0.95, 0.97, 0.5], [0.8, 0.85, 0.86, 0.1])
    results = image_classifier_lib.run(
        _config(
            root,
            tmp_path / "out",
            validation_split=0.25,
            head_epochs=5,
            fine_tune_epochs=4,
            patience=2,
            augment="",
        ),
        callbacks=[script],
    )
    # Best at epoch 2 (0.9), then 2 epochs without improvement: 4 of 5 head epochs. The
    # fine-tuning phase counts afresh: 0.8, then 2 worse epochs, 3 of 4.
    assert results["feature_extraction"]["epochs"] == 4
    assert results["fine_tune"]["epochs"] == 3


class _ChangedVariables(keras.callbacks.Callback):
    """The paths of the variables each `fit` changed, and the blocks it trained."""

    def __init__(self):
        super().__init__()
        self.changed, self.trainable_blocks, self._before = [], [], {}

    def on_train_begin(self, logs=None):
        self._before = {v.path: np.array(v) for v in self.model.weights}
        self.trainable_blocks.append(kt.trainable_blocks(self.model))

    def on_train_end(self, logs=None):
        self.changed.append(
            {
                v.path
                for v in self.model.weights
                if not np.array_equal(self._before[v.path], np.array(v))
            }
        )


@pytest.mark.parametrize("freeze_strategy", ["none", "all_frozen"])
def test_freeze_strategy_decides_which_variables_train(image_folder, tmp_path, freeze_strategy):
    root = image_folder({"a": 6, "b": 6})
    watcher, recorder = _ChangedVariables(), _Recorder()
    results = image_classifier_lib.run(
        _config(
            root,
            tmp_path / "out",
            validation_split=0.25,
            head_epochs=1,
            fine_tune_epochs=1,
            freeze_strategy=freeze_strategy,
            fine_tune_lr=1e-4,
            cache_features=False,  # the whole model in every phase, for the watcher
            ema_momentum=0.0,
            augment="",
        ),
        callbacks=[watcher, recorder],
    )
    model = recorder.steps[0]["model"]
    blocks = kt.get_blocks(model)
    backbone_paths = {v.path for b in blocks for v in b.variables}
    (changed,) = watcher.changed  # one fit either way
    (trainable_blocks,) = watcher.trainable_blocks
    if freeze_strategy == "none":
        # Everything trains from the first epoch, for head + fine-tune epochs, at the
        # fine-tuning rate.
        assert results["history"]["phase"] == ["fine_tune", "fine_tune"]
        assert trainable_blocks == [b.name for b in blocks]
        assert results["unfrozen_blocks"] == [b.name for b in blocks]
        (optimizer,) = recorder.optimizers()
        assert float(optimizer.learning_rate) == pytest.approx(1e-4)
        block_of = {v.path: b.name for b in blocks for v in b.variables}
        first_step = recorder.steps[0]["trainable_variables"]
        assert {block_of[p] for p in first_step if p in block_of} == {b.name for b in blocks}
        assert changed <= set(first_step) and changed - backbone_paths  # the head trained
    else:
        # The head alone trains; no fine-tuning phase.
        assert results["history"]["phase"] == ["feature_extraction"]
        assert results["fine_tune"] == {}
        assert trainable_blocks == []
        assert changed and not changed & backbone_paths


@pytest.mark.slow
def test_binary_config_file_and_flag_override(image_folder, tmp_path):
    root = image_folder({"x": 4, "y": 4})
    model_dir = tmp_path / "out"
    config_path = tmp_path / "run.json"
    config_path.write_text(
        json.dumps(
            {
                "transfer_config": {
                    "data_dir": str(root),
                    "source_model": "mobilenet",
                    "weights": "none",
                    "image_size": 32,
                    "batch_size": 4,
                    "epochs": {"head": 3, "fine_tune": 1},
                    "validation_split": 0.25,
                    "verbose": 0,
                }
            }
        )
    )
    completed = subprocess.run(
        [
            sys.executable,
            EXAMPLE,
            f"--config={config_path}",
            f"--model_dir={model_dir}",
            "--head_epochs=1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    resolved = json.loads((model_dir / "config.json").read_text())
    assert (resolved["head_epochs"], resolved["fine_tune_epochs"]) == (1, 1)
    assert resolved["backbone"] == "mobilenet"


def test_cached_head_phase_then_fine_tuning_on_one_timeline_with_best_weights_kept(
    image_folder, tmp_path
):
    root = image_folder({"a": 6, "b": 6})
    seen = InterruptAt()
    results = image_classifier_lib.run(
        _config(
            root,
            tmp_path / "out",
            validation_split=0.25,
            fine_tune_epochs=2,
            restore_best=True,
            ema_momentum=0.0,
        ),
        callbacks=[seen],
    )
    assert results["cached_features"] is True
    assert seen.epochs == [0, 1, 2, 3]  # callbacks see phase 2 continue phase 1's count
    history = results["history"]
    assert history["epoch"] == [1, 2, 3, 4]
    assert results["feature_extraction"]["epochs"] == 2
    # The saved weights are those of the lowest-val_loss epoch (fine-tuning had to beat
    # the head phase's best), and the saved model's measured accuracy is that epoch's.
    best = int(np.argmin(history["val_loss"]))
    assert results["saved_weights"] == {"phase": history["phase"][best], "epoch": best + 1}
    assert results["saved_model_val_accuracy"] == pytest.approx(
        history["val_accuracy"][best], abs=1e-6
    )


def test_interrupted_run_resumes_from_model_dir(image_folder, tmp_path):
    root = image_folder({"a": 6, "b": 6})
    # Through the frozen backbone, phase 1 is backed up epoch by epoch too.
    config = _config(
        root,
        tmp_path / "out",
        validation_split=0.25,
        head_epochs=2,
        augment="",
        cache_features=False,
    )
    first = InterruptAt(at=1)
    with pytest.raises(KeyboardInterrupt):
        image_classifier_lib.run(config, callbacks=[first])
    assert first.epochs == [0]
    assert os.listdir(tmp_path / "out" / "backup")

    second = InterruptAt()
    results = image_classifier_lib.run(config, callbacks=[second])
    assert second.epochs == [1, 2]  # epoch 0 is not trained again
    assert results["history"]["epoch"] == [1, 2, 3]
    assert results["feature_extraction"]["epochs"] == 2


def test_cached_run_interrupted_in_fine_tuning_resumes_there(image_folder, tmp_path):
    root = image_folder({"a": 6, "b": 6})
    config = _config(root, tmp_path / "out", validation_split=0.25, fine_tune_epochs=2)
    first = InterruptAt(at=3)
    with pytest.raises(KeyboardInterrupt):
        image_classifier_lib.run(config, callbacks=[first])
    assert first.epochs == [0, 1, 2]

    second = InterruptAt()
    results = image_classifier_lib.run(config, callbacks=[second])
    # The finished cached phase 1 is not repeated (extraction included), nor is
    # fine-tuning epoch 2; the history still covers every epoch once.
    assert second.epochs == [3]
    assert results["history"]["epoch"] == [1, 2, 3, 4]
    assert results["history"]["phase"] == ["feature_extraction"] * 2 + ["fine_tune"] * 2


def _tensorboard_scalars(log_dir):
    """`{tag: [(step, value), ...]}` as TensorBoard reads the run in `log_dir`."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return {
        tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)]
        for tag in accumulator.Tags()["tensors"]
        if tag.startswith("epoch_")  # not the model-config text summary
    }


def test_tensorboard_logs_one_epoch_timeline_across_phases(image_folder, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard to write TensorBoard logs")
    root = image_folder({"cats": 6, "dogs": 6})
    model_dir = tmp_path / "out"
    results = image_classifier_lib.run(
        _config(root, model_dir, head_epochs=1, fine_tune_epochs=2, validation_split=0.25)
    )
    history = results["history"]
    assert history["phase"] == ["feature_extraction", "fine_tune", "fine_tune"]
    for split, prefix in (("train", ""), ("validation", "val_")):
        scalars = _tensorboard_scalars(model_dir / "logs" / split)
        for metric in ("loss", "accuracy"):
            # The fine-tuning phase continues the head phase's epoch axis (no restart at 0),
            # with the values the run reported.
            steps, values = zip(*scalars[f"epoch_{metric}"])
            assert steps == (0, 1, 2)
            np.testing.assert_allclose(values, history[prefix + metric], rtol=1e-6)
    learning_rates = dict(_tensorboard_scalars(model_dir / "logs" / "train")["epoch_learning_rate"])
    assert learning_rates[1] < learning_rates[0]  # the phase boundary is visible


def test_max_pixels_and_empty_validation_folder_are_reported_in_results(image_folder, tmp_path):
    train = image_folder({"a": 5, "b": 5}, subdir="train")  # 40x48 = 1920 pixels each
    image_folder({"a": 1}, subdir="big", size=(60, 60))  # 3600 pixels
    big = tmp_path / "images" / "big" / "a"
    large = sorted(big.iterdir())[0]
    os.replace(large, train / "a" / "large.jpg")
    (train.parent / "val").mkdir()  # an empty validation folder
    results = image_classifier_lib.run(
        _config(train.parent, tmp_path / "out", max_pixels=3000, fine_tune_epochs=0)
    )
    assert results["skip_reasons"].keys() == {str(train / "a" / "large.jpg")}
    assert "60x60 pixels" in next(iter(results["skip_reasons"].values()))
    assert results["num_train"] == 10
    assert results["validation"] is False
    assert any("val" in warning for warning in results["warnings"])


def test_class_weight_flag_warning_and_balanced_accuracy_in_results(image_folder, tmp_path):
    image_folder({"cats": 8, "dogs": 2}, subdir="train")
    root = image_folder({"cats": 3, "dogs": 3}, subdir="val").parent
    results = image_classifier_lib.run(
        _config(root, tmp_path / "out", class_weight="balanced", fine_tune_epochs=0)
    )
    assert results["class_counts"] == [8, 2]
    assert results["class_weight"] == pytest.approx({"cats": 10 / 16, "dogs": 10 / 4})
    assert any("4.0x" in warning and "'dogs'" in warning for warning in results["warnings"])
    report = results["validation_report"]
    recall = report["recall_per_class"]
    assert report["balanced_accuracy"] == pytest.approx((recall["cats"] + recall["dogs"]) / 2)
    with pytest.raises(ValueError, match="wolves"):
        image_classifier_lib.run(_config(root, tmp_path / "bad", class_weight='{"wolves": 2}'))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="JSON object"):
        _config(root, tmp_path / "bad", class_weight="[1]")


def test_advisor_plans_the_settings_not_given_and_a_kill_in_fine_tuning_resumes(
    image_folder, tmp_path
):
    root = image_folder({"a": 8, "b": 8})
    # The advisor fills in everything but fine_tune_epochs, patience and lr_decay (its EMA
    # included); early stopping and per-block learning rates compose with the EMA, and a
    # kill in fine-tuning resumes there.
    config = _config(
        root,
        tmp_path / "out",
        plan="auto",
        head_epochs=None,
        unfreeze_blocks=None,
        fine_tune_epochs=3,
        patience=3,
        lr_decay=0.8,
        validation_split=0.25,
        augment="",
        diagnostics=True,  # the plan quotes the measured LogME
    )
    first = _InterruptInFineTuning()
    with pytest.raises(KeyboardInterrupt):
        image_classifier_lib.run(config, callbacks=[first])
    second = InterruptAt()
    results = image_classifier_lib.run(config, callbacks=[second])

    plan = results["plan"]
    backbone = kt.create_backbone("mobilenet", input_shape=(32, 32, 3), weights=None)
    recipe = kt.recommend_training_plan(12, plan["block_logme"], backbone=backbone)
    assert list(plan["block_logme"]) == backbone.block_names()
    assert plan["given"] == ["fine_tune_epochs", "patience"] and plan["source"] == "auto"
    assert (plan["fine_tune_epochs"], plan["patience"]) == (3, 3)  # the given settings win
    assert (plan["head_epochs"], plan["head_lr"], plan["fine_tune_lr"]) == (
        recipe.head_epochs,
        recipe.head_lr,
        recipe.fine_tune_lr,
    )
    assert plan["unfreeze_blocks"] == str(recipe.unfreeze)
    assert (plan["restore_best"], plan["ema_momentum"]) == (False, recipe.ema_momentum)
    assert plan["reason"] == recipe.reason + " Given settings win: fine_tune_epochs=3, patience=3."
    assert results["config"]["ema_momentum"] == 0.5  # what trained
    history = results["history"]
    head = [i for i, phase in enumerate(history["phase"]) if phase == "feature_extraction"]
    # Early stopping: the head phase ran until 3 epochs brought no lower val_loss.
    losses = [history["val_loss"][i] for i in head]
    if len(head) < plan["head_epochs"]:
        assert int(np.argmin(losses)) == len(head) - 1 - 3
    # Fine-tuning is numbered on from the head phase's last epoch, early-stopped or not.
    fine_tune_start = len(head)
    assert first.epochs == [fine_tune_start, fine_tune_start + 1]
    # The resumed run trained only the fine-tuning epochs after the kill.
    assert second.epochs[0] == fine_tune_start + 1
    # results.json counts epochs from 1, as Keras prints them, with no hole between phases.
    assert history["epoch"] == list(range(1, len(history["epoch"]) + 1))
    assert [e for e in history["epoch"] if e > fine_tune_start][:2] == [
        fine_tune_start + 1,
        fine_tune_start + 2,
    ]


class _InterruptInFineTuning(keras.callbacks.Callback):
    """Records the fine-tuning epochs that begin and raises `KeyboardInterrupt` (a kill) at
    the second. Phase 1 trains a model over cached feature vectors, phase 2 the image model,
    so the phase is told by the model's input rank."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        if len(self.model.input_shape) != 4:
            return
        self.epochs.append(epoch)
        if len(self.epochs) == 2:
            raise KeyboardInterrupt("simulated preemption")


def test_fixed_plan_keeps_the_old_defaults(image_folder, tmp_path):
    root = image_folder({"a": 6, "b": 6})
    config = _config(
        root, tmp_path / "out", head_epochs=None, fine_tune_epochs=0, unfreeze_blocks=None
    )
    resolved, plan = image_plan.plan_training(config, None, None, None)
    assert plan["source"] == "fixed" and plan["given"] == ["fine_tune_epochs"]
    assert (resolved.head_epochs, resolved.fine_tune_epochs, resolved.unfreeze_blocks) == (
        20,
        0,
        "all",
    )
    assert (resolved.fine_tune_lr, resolved.patience, resolved.restore_best) == (2e-5, 0, False)
    assert resolved.ema_momentum == 0.5


def test_fixed_defaults_are_spelled_as_the_flags_take_them():
    # --plan's help quotes this; its values come from fit_two_phase's constants.
    spelled = image_config.describe_fixed_defaults()
    assert spelled == "20, 5, all, 0.001, 2e-05, 0, false, 0.5"


def test_diagnostics_report_transferability_drift_and_source_agreement(image_folder, tmp_path):
    from conftest import assert_png_image

    root = image_folder({"a": 16, "b": 16})
    # A with-top weights file of the same architecture, as mobilenet_1_0_224_tf.h5 is.
    with_top = keras.applications.MobileNet(weights=None, input_shape=(32, 32, 3))
    source_weights = tmp_path / "with_top.weights.h5"
    with_top.save_weights(source_weights)
    model_dir = tmp_path / "out"
    config = _config(
        root,
        model_dir,
        validation_split=0.25,
        fine_tune_lr=1e-2,
        diagnostics=True,
        source_weights=str(source_weights),
    )
    results = image_classifier_lib.run(config)

    diagnostics = json.loads((model_dir / "results.json").read_text())["diagnostics"]
    assert diagnostics == json.loads(json.dumps(results["diagnostics"]))
    backbone = kt.create_backbone("mobilenet", input_shape=(32, 32, 3), weights=None)
    names = backbone.block_names()
    logme = diagnostics["transferability"]["logme"]
    assert list(logme) == names and list(diagnostics["transferability"]["hscore"]) == names
    assert diagnostics["transferability"]["best_block_by_logme"] == max(logme, key=logme.get)
    assert "leep" in diagnostics["transferability"]  # a source head was given
    # Only conv_dw_12 and conv_dw_13 were fine-tuned: the blocks below kept their
    # representation exactly. (How much the top blocks drift is not tested here: in a
    # random network under fresh BatchNormalization statistics activations vanish.)
    cka = diagnostics["block_cka"]
    assert list(cka) == names
    assert all(cka[name] == pytest.approx(1.0, abs=1e-6) for name in names[:-2]), cka
    # The same numbers as a report computed here from the same pretrained backbone (the run
    # seeds before building it), the saved model and the validation images.
    keras.utils.set_random_seed(config.seed)
    pretrained = kt.create_backbone("mobilenet", input_shape=(32, 32, 3), weights=None)
    saved = keras.saving.load_model(model_dir / "model.keras")
    validation = data.image_folder_dataset(
        root, image_size=32, batch_size=8, validation_split=0.25, seed=config.seed
    ).validation
    expected = kt.forgetting_report(
        pretrained,
        saved,
        validation,
        source_head=kt.forgetting.source_model(pretrained, source_weights),
    )
    assert diagnostics["source_top1_agreement"] == pytest.approx(expected["source_top1_agreement"])
    for name in names:
        assert cka[name] == pytest.approx(expected["block_cka"][name], abs=1e-4)
    assert diagnostics["probe_split"] == "validation"
    assert diagnostics["num_probe_images"] == results["num_validation"] == 9
    assert_png_image(model_dir / "drift.png")


@pytest.mark.tensorflow_only
def test_target_dir_and_adapt_report_domain_distance_and_target_accuracy(image_folder, tmp_path):
    from conftest import write_image_folder

    root = image_folder({"a": 8, "b": 8})
    # Target: the same classes in subfolders, other images of another size.
    target_dir = tmp_path / "target"
    write_image_folder(target_dir, {"a": 4, "b": 4}, size=(56, 44), seed=3)
    model_dir = tmp_path / "out"
    config = _config(
        root,
        model_dir,
        validation_split=0.25,
        fine_tune_epochs=2,
        target_dir=str(target_dir),
        adapt="dann",
        # The advisor's plan (its EMA included) with the best weights kept (the
        # adaptation phase must beat the head phase's validation loss).
        plan="auto",
        restore_best=True,
    )
    results = image_classifier_lib.run(config)

    domain = json.loads((model_dir / "results.json").read_text())["domain"]
    assert (domain["method"], domain["target_images"], domain["target_labelled"]) == (
        "dann",
        8,
        True,
    )
    for when in ("distance_before", "distance_after"):
        distance = domain[when]
        assert distance["proxy_a_distance"] == pytest.approx(2 * (1 - 2 * distance["domain_error"]))
        assert distance["num_examples"] == 8  # the smaller set's size
    # Phase 2 was DANN (its logs), on the unfrozen blocks, continuing the epoch axis.
    history = results["history"]
    assert history["phase"] == ["feature_extraction"] * 2 + ["fine_tune"] * 2
    assert history["epoch"] == [1, 2, 3, 4]  # counted from 1
    assert not math.isnan(history["domain_accuracy"][-1])
    assert results["unfrozen_blocks"] == ["conv_dw_12", "conv_dw_13"]
    assert results["plan"]["restore_best"] is True
    assert results["plan"]["ema_momentum"] == 0.5
    # Adaptation keeps its last epoch (the source validation loss does not choose it); the
    # saved (EMA-averaged) weights are those validation scored at that epoch.
    assert results["saved_weights"] == {"phase": "fine_tune", "epoch": 4}
    assert results["saved_model_val_accuracy"] == pytest.approx(
        history["val_accuracy"][-1], abs=1e-6
    )
    # The reported target accuracy is the saved model's on the labelled target images.
    saved = keras.saving.load_model(model_dir / "model.keras")
    target = kt.data.target_image_dataset(target_dir, ["a", "b"], image_size=32)
    predicted = np.argmax(saved.predict(target.labelled.map(lambda x, y: x), verbose=0), axis=1)
    labels = np.concatenate([y for _, y in target.labelled.as_numpy_iterator()])
    assert domain["target_accuracy"] == pytest.approx(float(np.mean(predicted == labels)))


class _SourceLossRisesWhileAdapting(keras.callbacks.Callback):
    """Makes the source validation loss rise during domain adaptation (as it does on a real
    shift, when the alignment term kicks in) and keeps the classifier's predictions at the
    end of the adaptation phase, before any later callback acts."""

    def __init__(self, images):
        super().__init__()
        self.images, self.predictions, self.backbone_lr = images, None, None

    def on_train_begin(self, logs=None):
        if isinstance(self.model, kt.DomainAdaptation):  # the backbone's rate: the base one
            self.backbone_lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if isinstance(self.model, kt.DomainAdaptation):
            logs["val_loss"] = 100.0 + epoch  # runs before early stopping reads it

    def on_train_end(self, logs=None):
        if isinstance(self.model, kt.DomainAdaptation):
            self.predictions = self.model.classifier.predict(self.images, verbose=0)


@pytest.mark.tensorflow_only
def test_adapt_keeps_its_last_epoch_when_the_source_validation_loss_rises(image_folder, tmp_path):
    from conftest import write_image_folder

    root = image_folder({"a": 8, "b": 8})
    target_dir = tmp_path / "target"
    write_image_folder(target_dir, {"a": 4, "b": 4}, size=(40, 40), seed=3)
    images = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    watch = _SourceLossRisesWhileAdapting(images)
    model_dir = tmp_path / "out"
    config = _config(
        root,
        model_dir,
        validation_split=0.25,
        fine_tune_epochs=2,
        target_dir=str(target_dir),
        adapt="coral",
        restore_best=True,
        patience=1,
    )
    results = image_classifier_lib.run(config, callbacks=[watch])
    # The backbone adapts at the plan's fine_tune_lr (a tenth of head_lr lost 18 points to
    # source-only on photo_shift: benchmarks/results/command_adapt_photo_shift_backbone_lr.json).
    assert watch.backbone_lr == pytest.approx(results["plan"]["fine_tune_lr"]) == 2e-5
    assert results["history"]["phase"][-2:] == ["fine_tune"] * 2  # no early stop either
    assert results["saved_weights"] == {"phase": "fine_tune", "epoch": 4}
    saved = keras.saving.load_model(model_dir / "model.keras")
    np.testing.assert_allclose(saved.predict(images, verbose=0), watch.predictions, atol=1e-6)


@pytest.mark.jax_only
@pytest.mark.parametrize(
    "setting, overrides",
    [
        ("adapt=dann", {"adapt": "dann", "target_dir": "x"}),
        ("adapt=coral", {"adapt": "coral", "target_dir": "x"}),
        ("freeze_strategy=gradual", {"freeze_strategy": "gradual", "unfreeze_schedule": "1:1"}),
    ],
)
def test_tensorflow_only_settings_are_refused_on_other_backends(tmp_path, setting, overrides):
    with pytest.raises(ConfigError, match=f"^{setting} needs the TensorFlow backend, but Keras"):
        _config(tmp_path, tmp_path / "out", **overrides)
    assert not (tmp_path / "out").exists()


def test_adapt_needs_a_target_and_the_two_phase_strategy(tmp_path):
    with pytest.raises(ConfigError, match="set target_dir"):
        _config(tmp_path, tmp_path / "out", adapt="coral")
    with pytest.raises(ConfigError, match="replaces the fine-tuning phase"):
        _config(tmp_path, tmp_path / "out", adapt="mmd", target_dir="x", fine_tune="lora")
    with pytest.raises(ConfigError, match="adapt='swd' is not one of"):
        _config(tmp_path, tmp_path / "out", adapt="swd", target_dir="x")
