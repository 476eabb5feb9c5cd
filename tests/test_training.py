"""fit_two_phase: what trains in each phase, one epoch timeline, callbacks pass through."""

import json

import keras
import numpy as np
import pytest
from interruption import InterruptAt

import keras_transfer as kt
from keras_transfer.backbones import freezing


@pytest.fixture
def model():
    # VGG: no BatchNormalization, so a randomly initialised backbone still passes gradients
    # at 32 px (a random MobileNet's features vanish to ~1e-22 with BN in inference mode).
    return kt.create_classifier("vgg16", 2, input_shape=(32, 32, 3), weights=None)


class _RecordTrainable(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []
        self.learning_rates = []
        self.trainable_counts = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)
        self.learning_rates.append(float(self.model.optimizer.learning_rate))
        self.trainable_counts.append(len(self.model.trainable_weights))


def test_phases_train_what_they_should(model, tiny_dataset):
    backbone_before = {v.path: np.array(v).copy() for v in model.backbone.weights}
    recorder = _RecordTrainable()
    history = kt.fit_two_phase(
        model,
        tiny_dataset,
        tiny_dataset,
        head_epochs=2,
        fine_tune_epochs=2,
        head_lr=1e-2,
        fine_tune_lr=None,  # head_lr / 10
        unfreeze=1,
        callbacks=[recorder],
        verbose=0,
    )
    assert history.phases == ["feature_extraction"] * 2 + ["fine_tune"] * 2
    assert history.epoch == [0, 1, 2, 3] == recorder.epochs
    assert recorder.learning_rates == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3])
    assert recorder.trainable_counts[0] == len(model.head.trainable_weights)
    assert recorder.trainable_counts[2] > recorder.trainable_counts[0]
    assert history.unfrozen_blocks == ["block5"]
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 4 for v in history.history.values())
    assert set(history.seconds) == {"feature_extraction", "fine_tune"}
    # Exactly the unfrozen block's weights moved.
    changed = {
        path
        for path, old in backbone_before.items()
        if not np.array_equal(
            old, np.array(next(v for v in model.backbone.weights if v.path == path))
        )
    }
    assert changed == {v.path for layer in model.blocks[-1].layers for v in layer.weights}


def test_initial_epoch_shifts_both_phases_and_resumes(model, tiny_dataset, tmp_path):
    kwargs = dict(head_epochs=2, fine_tune_epochs=2, head_lr=1e-2, unfreeze=1, verbose=0)
    kwargs["fine_tune_lr"] = None  # head_lr / 10
    backup = tmp_path / "backup"
    first = _RecordTrainable()
    with pytest.raises(KeyboardInterrupt):
        kt.fit_two_phase(
            model,
            tiny_dataset,
            tiny_dataset,
            initial_epoch=3,
            callbacks=[first, InterruptAt(6)],
            backup_dir=backup,
            **kwargs,
        )
    # Phase 1 is epochs 3-4, phase 2 starts at 5: one timeline for the callbacks.
    assert first.epochs == [3, 4, 5, 6]
    assert first.learning_rates[:3] == pytest.approx([1e-2, 1e-2, 1e-3])
    with pytest.raises(ValueError, match="other settings"):
        kt.fit_two_phase(
            model, tiny_dataset, tiny_dataset, initial_epoch=0, backup_dir=backup, **kwargs
        )
    resumed = _RecordTrainable()
    fresh = kt.create_classifier("vgg16", 2, input_shape=(32, 32, 3), weights=None)
    history = kt.fit_two_phase(
        fresh,
        tiny_dataset,
        tiny_dataset,
        initial_epoch=3,
        callbacks=[resumed],
        backup_dir=backup,
        **kwargs,
    )
    assert resumed.epochs == [6]  # only the epoch the kill prevented
    assert history.epoch == [3, 4, 5, 6]
    assert history.phases == ["feature_extraction"] * 2 + ["fine_tune"] * 2
    assert all(len(v) == 4 for v in history.history.values())
    assert not backup.exists()


class _StopAfterEpoch(keras.callbacks.Callback):
    """Early stopping at the end of epoch `epoch` (the head phase, in these tests)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.stop_training = True


def test_fine_tuning_continues_where_an_early_stopped_head_phase_ended(model, tiny_dataset):
    recorder = _RecordTrainable()
    history = kt.fit_two_phase(
        model,
        tiny_dataset,
        tiny_dataset,
        head_epochs=5,
        fine_tune_epochs=2,
        unfreeze=1,
        initial_epoch=1,
        callbacks=[_StopAfterEpoch(2), recorder],
        verbose=0,
    )
    # Phase 1 stopped after epochs 1-2 of 1-5: phase 2 is 3-4, not the planned 6-7.
    assert recorder.epochs == [1, 2, 3, 4] == history.epoch
    assert history.phases == ["feature_extraction"] * 2 + ["fine_tune"] * 2
    assert history.phase_summary("fine_tune")["epochs"] == 2


def test_resume_after_an_early_stopped_head_phase_keeps_the_epoch_numbers(
    model, tiny_dataset, tmp_path
):
    kwargs = dict(head_epochs=5, fine_tune_epochs=3, head_lr=1e-2, unfreeze=1, verbose=0)
    kwargs["fine_tune_lr"] = None  # head_lr / 10
    backup = tmp_path / "backup"
    first = _RecordTrainable()
    with pytest.raises(KeyboardInterrupt):
        kt.fit_two_phase(
            model,
            tiny_dataset,
            tiny_dataset,
            callbacks=[_StopAfterEpoch(1), first, InterruptAt(3)],
            backup_dir=backup,
            **kwargs,
        )
    assert first.epochs == [0, 1, 2, 3]
    resumed = _RecordTrainable()
    fresh = kt.create_classifier("vgg16", 2, input_shape=(32, 32, 3), weights=None)
    history = kt.fit_two_phase(
        fresh,
        tiny_dataset,
        tiny_dataset,
        # No early stop now: the resumed run must still number phase 2 from epoch 2.
        callbacks=[resumed],
        backup_dir=backup,
        **kwargs,
    )
    assert resumed.epochs == [3, 4]  # the epochs the kill prevented, under the same numbers
    assert resumed.learning_rates == pytest.approx([1e-3, 1e-3])
    assert history.epoch == [0, 1, 2, 3, 4]
    assert history.phases == ["feature_extraction"] * 2 + ["fine_tune"] * 3
    assert not backup.exists()


def test_a_backup_without_the_recorded_fine_tuning_start_resumes_on_the_plan(
    model, tiny_dataset, tmp_path
):
    kwargs = dict(head_epochs=2, fine_tune_epochs=2, head_lr=1e-2, unfreeze=1, verbose=0)
    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        kt.fit_two_phase(
            model, tiny_dataset, callbacks=[InterruptAt(3)], backup_dir=backup, **kwargs
        )
    # A backup written before phase 2's first epoch was recorded: it numbered phase 2
    # from the plan (here the same as where phase 1 ended).
    path = backup / kt.training.STATE_FILE
    state = json.loads(path.read_text())
    assert state.pop("fine_tune_initial_epoch") == 2
    path.write_text(json.dumps(state))
    resumed = _RecordTrainable()
    fresh = kt.create_classifier("vgg16", 2, input_shape=(32, 32, 3), weights=None)
    history = kt.fit_two_phase(
        fresh, tiny_dataset, callbacks=[resumed], backup_dir=backup, **kwargs
    )
    assert resumed.epochs == [3]
    assert history.epoch == [0, 1, 2, 3]


def test_history_summaries(model, tiny_dataset):
    history = kt.fit_two_phase(
        model, tiny_dataset, tiny_dataset, head_epochs=1, fine_tune_epochs=2, verbose=0
    )
    last = history.phase_metrics("fine_tune")
    assert last["val_accuracy"] == history.history["val_accuracy"][-1]
    best = history.best_phase_metrics("fine_tune")
    assert best["epoch"] in (1, 2)
    assert history.phase_metrics("nope") == {}
    summary = history.phase_summary("fine_tune")
    assert summary["epochs"] == 2 and summary["val_accuracy"] == last["val_accuracy"]
    assert summary["best_epoch"] == best["epoch"] + 1
    assert summary["best_val_accuracy"] == best["val_accuracy"]
    assert summary["seconds"] == round(history.seconds["fine_tune"], 2)
    assert history.phase_summary("nope") == {}


def test_skipping_a_phase(model, tiny_dataset):
    history = kt.fit_two_phase(model, tiny_dataset, head_epochs=0, fine_tune_epochs=1, verbose=0)
    assert history.phases == ["fine_tune"]
    history = kt.fit_two_phase(model, tiny_dataset, head_epochs=1, fine_tune_epochs=0, verbose=0)
    assert history.phases == ["feature_extraction"]
    assert kt.trainable_blocks(model) == []


def test_optimizer_choices(model, tiny_dataset):
    made = []

    def factory(learning_rate):
        made.append(learning_rate)
        return keras.optimizers.SGD(learning_rate, momentum=0.9)

    kt.fit_two_phase(
        model,
        tiny_dataset,
        head_epochs=1,
        fine_tune_epochs=1,
        head_lr=0.1,
        fine_tune_lr=None,  # head_lr / 10
        optimizer=factory,
        verbose=0,
    )
    assert made == pytest.approx([0.1, 0.01])
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    kt.fit_two_phase(
        model,
        tiny_dataset,
        head_epochs=1,
        fine_tune_epochs=1,
        optimizer="rmsprop",
        fine_tune_optimizer=keras.optimizers.SGD,
        verbose=0,
    )
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    with pytest.raises(TypeError, match="not an optimizer instance"):
        kt.fit_two_phase(model, tiny_dataset, optimizer=keras.optimizers.Adam(), verbose=0)
    with pytest.raises(ValueError):
        kt.fit_two_phase(model, tiny_dataset, optimizer="no_such_optimizer", verbose=0)


def test_bad_requests_fail_before_training(model, tiny_dataset):
    with pytest.raises(ValueError, match="Cannot unfreeze the top 99 blocks"):
        kt.fit_two_phase(model, tiny_dataset, unfreeze=99, verbose=0)
    with pytest.raises(TypeError, match="sets `epochs` itself"):
        kt.fit_two_phase(model, tiny_dataset, epochs=3, verbose=0)
    with pytest.raises(ValueError, match="initial_epoch must be an integer >= 0"):
        kt.fit_two_phase(model, tiny_dataset, initial_epoch=-1, verbose=0)
    plain = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 32, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    with pytest.raises(ValueError, match="Pass `loss=`"):
        kt.fit_two_phase(plain, tiny_dataset, verbose=0)


def test_unfreeze_request_parsing():
    assert freezing.unfreeze_request("all") == {"top_blocks": "all"}
    assert freezing.unfreeze_request("3") == {"top_blocks": 3}
    assert freezing.unfreeze_request(0.25) == {"fraction": 0.25}
    assert freezing.unfreeze_request("conv_dw_12") == {"from_block": "conv_dw_12"}
