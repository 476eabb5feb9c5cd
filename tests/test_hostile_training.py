"""Training under hostile input and faults (issue 17, items 5-9 and 13): labels outside
{0, 1}, empty data, nonsense learning rates, feature caches that share a folder or run out of
disk, half-written backups, and predictable temporary file names."""

import errno
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from interruption import InterruptAt

import keras_transfer as kt
from keras_transfer.training import extraction
from keras_transfer.training import feature_writer
from keras_transfer.training import lr_finder
from keras_transfer.training import two_phase as training
from keras_transfer.training.callbacks.backup import AtomicBackupAndRestore
from keras_transfer.training.callbacks.backup import BackupUnreadableError
from keras_transfer.utils import reliability


def images(n=16, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype("float32")


@pytest.fixture
def dataset():
    y = (np.arange(16) % 2).astype("int32")
    return tf.data.Dataset.from_tensor_slices((images(), y)).batch(8)


# --- 5. labels of sigmoid heads ---------------------------------------------------------


@pytest.mark.parametrize(
    "task, labels",
    [
        ("binary", np.array([0, 1, 0.5, 1] * 2, "float32")),
        ("binary", np.array([0, 1, 3, 1] * 2, "int32")),
        ("multilabel", np.array([[0, 1, 1], [1, 0, 3]] * 4, "float32")),
    ],
)
def test_sigmoid_heads_refuse_labels_outside_0_and_1(task, labels):
    head = kt.ClassificationHead(1 if task == "binary" else 3, task=task, pooling=None)
    model = keras.Sequential([keras.Input((4,)), head])
    model.compile(optimizer="sgd", loss=head.default_loss())
    # TensorFlow's in-graph assertion; on JAX a host callback's error (a RuntimeError).
    error = (
        tf.errors.InvalidArgumentError if keras.backend.backend() == "tensorflow" else RuntimeError
    )
    with pytest.raises(error, match=r"(?s)must be 0 or 1.*task=multiclass.*\[(0.5|3)"):
        model.fit(np.ones((8, 4), "float32"), labels, batch_size=8, epochs=1, verbose=0)


def test_valid_binary_labels_train_and_soft_labels_need_an_explicit_loss():
    head = kt.ClassificationHead(1, task="binary", pooling=None)
    model = keras.Sequential([keras.Input((4,)), head])
    model.compile(optimizer="sgd", loss=head.default_loss())
    x = np.ones((8, 4), "float32")
    model.fit(x, np.array([0, 1] * 4, "int32"), batch_size=8, epochs=1, verbose=0)
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy())  # soft, on purpose
    history = model.fit(x, np.full(8, 0.3, "float32"), batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_checked_loss_is_the_sigmoid_default_and_serializes():
    loss = kt.ClassificationHead(3, task="multilabel").default_loss()
    assert isinstance(loss, kt.BinaryLabelCrossentropy)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, kt.BinaryLabelCrossentropy)
    assert (
        type(kt.ClassificationHead(3).default_loss()) is keras.losses.SparseCategoricalCrossentropy
    )


# --- 6. empty data -------------------------------------------------------------------------


def test_fit_two_phase_refuses_empty_data_of_unknown_size(dataset, new_tiny_classifier):
    empty = dataset.unbatch().filter(lambda x, y: False).batch(8)
    assert int(empty.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    model = new_tiny_classifier()
    # On JAX, whose trainer reads a first batch before any callback, before training.
    with pytest.raises(ValueError, match="train_data (yielded no batches in epoch 1|is empty)"):
        kt.fit_two_phase(model, empty, head_epochs=1, fine_tune_epochs=1, verbose=0)
    with pytest.raises(ValueError, match="validation_data (yielded no batches|is empty)"):
        kt.fit_two_phase(model, dataset, empty, head_epochs=1, fine_tune_epochs=0, verbose=0)


def test_find_learning_rate_on_empty_data_is_a_clear_error(dataset, new_tiny_classifier):
    model = new_tiny_classifier()
    model.compile()
    empty = dataset.unbatch().filter(lambda x, y: False).batch(8)
    with pytest.raises(ValueError, match="`data` yielded no batches"):
        lr_finder.find_learning_rate(model, empty, steps=5)


# --- 7. learning rates ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_classifier(new_tiny_classifier):
    return new_tiny_classifier()


@pytest.mark.parametrize("value", [-1e-3, 0.0, float("nan"), float("inf"), "1e-3", True])
def test_bad_learning_rates_name_the_argument(dataset, shared_classifier, value):
    model = shared_classifier
    with pytest.raises(
        ValueError, match=f"head_lr must be a positive finite number, got {value!r}"
    ):
        kt.fit_two_phase(model, dataset, head_lr=value, verbose=0)
    with pytest.raises(ValueError, match="fine_tune_lr must be a positive finite number"):
        kt.fit_two_phase(model, dataset, fine_tune_lr=value, verbose=0)
    with pytest.raises(ValueError, match="learning_rate must be a positive finite number"):
        kt.fit_feature_extractor(model, dataset, learning_rate=value, verbose=0)
    with pytest.raises(ValueError, match="head_lr must be a positive finite number"):
        kt.fit_two_phase_cached(model, dataset, head_lr=value, verbose=0)
    assert getattr(model, "optimizer", None) is None  # nothing ran


# --- 8. feature caches -------------------------------------------------------------------


def _extract(extractor, n, seed, cache_dir):
    x = images(n, seed)
    data = tf.data.Dataset.from_tensor_slices((x, np.zeros(n, "int32"))).batch(4)
    return extraction.extract_features(
        extractor, data, cache_dir=cache_dir, max_memory_bytes=1, verbose=0
    )


def test_two_extractions_into_one_cache_dir_keep_their_own_files(tmp_path, new_tiny_classifier):
    extractor = extraction.feature_extractor(new_tiny_classifier())
    first = _extract(extractor, 8, seed=0, cache_dir=tmp_path)
    assert first.on_disk
    expected = np.array(first.features)
    second = _extract(extractor, 12, seed=1, cache_dir=tmp_path)
    assert second.path != first.path
    np.testing.assert_array_equal(np.array(first.features), expected)  # not overwritten
    assert second.num_examples == 12
    path = second.path
    del second
    import gc

    gc.collect()
    assert not os.path.exists(path)  # deleted when no longer used
    assert os.listdir(tmp_path) == [os.path.basename(first.path)]


def test_full_disk_is_a_clear_error_before_streaming(tmp_path, monkeypatch, new_tiny_classifier):
    extractor = extraction.feature_extractor(new_tiny_classifier())
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))  # 1 KB free
    with pytest.raises(OSError, match=r"(?s)needs about [\d,]+ bytes.*1,000 bytes are free.*"):
        _extract(extractor, 8, seed=0, cache_dir=tmp_path / "cache")
    assert not any(files for _, _, files in os.walk(tmp_path))  # no half-written files


def test_disk_filling_up_while_streaming_leaves_no_files(
    tmp_path, monkeypatch, new_tiny_classifier
):
    extractor = extraction.feature_extractor(new_tiny_classifier())
    calls = []

    def full_after_one_batch(self, features_batch, labels):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, features_batch, labels)

    original = feature_writer.FeatureWriter.write
    monkeypatch.setattr(feature_writer.FeatureWriter, "write", full_after_one_batch)
    with pytest.raises(OSError, match="No space left.*cache"):
        _extract(extractor, 16, seed=0, cache_dir=tmp_path / "cache")
    assert not any(files for _, _, files in os.walk(tmp_path))


# --- 9. backups -----------------------------------------------------------------------------


class FullDiskAt(keras.callbacks.Callback):
    """From epoch `at` on, `model.save_weights` writes half a file and fails with ENOSPC."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:

            def full_disk(filepath, **kwargs):
                with open(filepath, "wb") as f:
                    f.write(b"\x89HDF\r\n\x1a\n" + bytes(100))
                raise OSError(errno.ENOSPC, "No space left on device")

            self.model.save_weights = full_disk


def test_full_disk_during_a_backup_keeps_the_last_good_one_and_resumes(
    dataset, tmp_path, new_tiny_classifier
):
    backup = tmp_path / "backup"
    kwargs = dict(head_epochs=1, fine_tune_epochs=3, head_lr=1e-2, verbose=0, backup_dir=backup)
    with pytest.raises(OSError, match="No space left"):
        # The first save of phase 2: there is no earlier backup to fall back to.
        training.fit_two_phase(new_tiny_classifier(), dataset, callbacks=[FullDiskAt(1)], **kwargs)
    assert not (backup / "fine_tune" / "latest.weights.h5").exists()  # nothing half-written
    recorder = InterruptAt()
    history = training.fit_two_phase(new_tiny_classifier(), dataset, callbacks=[recorder], **kwargs)
    assert recorder.epochs == [1, 2, 3]  # phase 1 was done; phase 2 runs in full
    assert history.epoch == [0, 1, 2, 3]


def small_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    return model


XY = (np.ones((8, 4), "float32"), np.zeros((8, 2), "float32"))


def _interrupted_backup(folder):
    """Backups of a run killed at the start of epoch 3: latest = end of epoch 2 (index), the
    previous one = end of epoch 1."""
    with pytest.raises(KeyboardInterrupt):
        small_model().fit(
            *XY,
            epochs=5,
            verbose=0,
            callbacks=[
                AtomicBackupAndRestore(folder, double_checkpoint=True, delete_checkpoint=False),
                InterruptAt(3),
            ],
        )


def _damage(path, tmp_path):
    """Writes at `path` a weights file of another model: Keras' "objects could not be
    loaded", as from a backup that was cut short."""
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5)])
    other.save_weights(tmp_path / "other.weights.h5")
    shutil.copyfile(tmp_path / "other.weights.h5", path)


def test_unreadable_backup_names_the_folder_and_the_fix(tmp_path):
    folder = tmp_path / "backup"
    _interrupted_backup(folder)
    for name in ("latest.weights.h5", "latest.weights.h5.bkp"):
        _damage(folder / name, tmp_path)
    model = small_model()
    before = model.get_weights()
    backup = AtomicBackupAndRestore(folder, double_checkpoint=True)
    with pytest.raises(BackupUnreadableError) as error:
        model.fit(*XY, epochs=5, verbose=0, callbacks=[backup])
    message = str(error.value)
    assert str(folder) in message and "could not be loaded" in message
    assert "Delete the folder" in message
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)  # nothing half-loaded


def test_damaged_latest_backup_falls_back_to_the_previous_one(tmp_path):
    folder = tmp_path / "backup"
    _interrupted_backup(folder)
    _damage(folder / "latest.weights.h5", tmp_path)
    recorder = InterruptAt()
    backup = AtomicBackupAndRestore(folder, double_checkpoint=True)
    small_model().fit(*XY, epochs=5, verbose=0, callbacks=[backup, recorder])
    assert recorder.epochs == [2, 3, 4]  # from the previous backup (end of epoch 1) onwards


def test_backup_callback_writes_no_partial_file_at_its_final_name(tmp_path):
    model = small_model()
    x, y = XY
    backup = AtomicBackupAndRestore(tmp_path / "b", delete_checkpoint=False)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[backup])
    good = (tmp_path / "b" / "latest.weights.h5").read_bytes()
    with pytest.raises(OSError, match="No space left"):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[FullDiskAt(1), backup])
    assert (tmp_path / "b" / "latest.weights.h5").read_bytes() == good
    assert sorted(os.listdir(tmp_path / "b")) == ["latest.weights.h5", "training_metadata.json"]


# --- 13. temporary files ------------------------------------------------------------------


def test_atomic_write_does_not_follow_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "model.json"
    # The name the previous implementation used for its temporary file.
    (tmp_path / f".partial-{os.getpid()}-model.json").symlink_to(victim)

    def write(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write("new")

    reliability.write_atomically(target, write)
    assert victim.read_text() == "precious"
    assert target.read_text() == "new" and not target.is_symlink()
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
