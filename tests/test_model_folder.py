"""The model folder of `keras-transfer train` under kills and concurrency: the final save
never loses a run, one run at a time writes a folder, config.json only describes runs that
trained, a resume refuses other settings, and exports leave no leftovers."""

import errno
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT
from conftest import make_tiny_classifier
from conftest import tiny_run_settings
from conftest import write_image_folder
from interruption import InterruptAt

from keras_transfer.apps import export as export_lib
from keras_transfer.apps import image_classifier as image_classifier_lib
from keras_transfer.apps import image_config
from keras_transfer.training import two_phase
from keras_transfer.training import two_phase_state
from keras_transfer.utils import reliability


def _config(data_dir, model_dir, **overrides):
    settings = tiny_run_settings(data_dir, model_dir, **{"batch_size": 8, **overrides})
    return image_config.Config(**settings)


def _weights(model_dir):
    return keras.saving.load_model(model_dir / "model.keras").get_weights()


class KillAt:
    """Raises `KeyboardInterrupt` (a kill) when a file is renamed onto a path named `name`:
    a step of the final save, simulated in `os.replace` itself."""

    def __init__(self, monkeypatch, name):
        real = os.replace

        def replace(source, target, *args, **kwargs):
            if os.path.basename(os.fspath(target)) == name:
                raise KeyboardInterrupt(f"simulated kill before {name}")
            return real(source, target, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)


# --- 2. a kill during the final save --------------------------------------------------------


@pytest.mark.slow
def test_a_kill_at_any_step_of_the_final_save_then_the_same_run_gives_the_uninterrupted_model(
    image_folder, tmp_path, monkeypatch
):
    root = image_folder({"a": 6, "b": 6})
    # EMA and best weights: the saved weights are not the last epoch's backup.
    options = dict(restore_best=True, patience=0, ema_momentum=0.9)
    uninterrupted = image_classifier_lib.run(_config(root, tmp_path / "reference", **options))
    model_dir = tmp_path / "out"
    config = _config(root, model_dir, **options)

    # Killed before model.keras is in place: nothing of the run's outputs is written.
    with monkeypatch.context() as patch:
        KillAt(patch, "model.keras")
        with pytest.raises(KeyboardInterrupt):
            image_classifier_lib.run(config)
    assert not (model_dir / "model.keras").exists()
    assert (model_dir / "backup" / two_phase_state.STATE_FILE).exists()

    # Started again and killed after model.keras, before results.json: no epoch trains.
    epochs = InterruptAt()
    with monkeypatch.context() as patch:
        KillAt(patch, "results.json")
        with pytest.raises(KeyboardInterrupt):
            image_classifier_lib.run(config, callbacks=[epochs])
    assert epochs.epochs == []
    assert (model_dir / "model.keras").exists() and not (model_dir / "results.json").exists()

    # Again, killed once every file is written, before the backup is deleted.
    def killed(*args):
        raise KeyboardInterrupt("simulated kill before the backup is deleted")

    with monkeypatch.context() as patch:
        patch.setattr(two_phase_state, "delete_backup", killed)
        with pytest.raises(KeyboardInterrupt):
            image_classifier_lib.run(config, callbacks=[epochs])
    assert (model_dir / "results.json").exists() and (model_dir / "backup").exists()

    # The same command, uninterrupted: it finishes from the backup, then deletes it.
    results = image_classifier_lib.run(config, callbacks=[epochs])
    assert epochs.epochs == []
    assert not (model_dir / "backup").exists()
    history, reference = results["history"], uninterrupted["history"]
    assert history.keys() == reference.keys()
    assert (history["epoch"], history["phase"]) == (reference["epoch"], reference["phase"])
    for key in set(history) - {"epoch", "phase"}:
        np.testing.assert_allclose(history[key], reference[key], rtol=1e-5, err_msg=key)
    assert json.loads((model_dir / "results.json").read_text()) == results
    for got, want in zip(_weights(model_dir), _weights(tmp_path / "reference"), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not [name for name in os.listdir(model_dir) if name.startswith(".")]


def test_fit_two_phase_keeps_a_finished_backup_on_request_and_restores_it(tiny_dataset, tmp_path):
    backup = tmp_path / "backup"
    kwargs = dict(head_epochs=1, fine_tune_epochs=1, unfreeze=2, verbose=0, backup_dir=backup)
    model = make_tiny_classifier()
    history = kt_fit(model, tiny_dataset, keep_backup=True, **kwargs)
    # The final values, the state, and the head phase's end (WiSE-FT starts from it).
    assert sorted(os.listdir(backup)) == [
        two_phase_state.HEAD_WEIGHTS_FILE,
        two_phase_state.FINAL_WEIGHTS_FILE,
        "two_phase_state.json",
    ]

    # A rerun restores the final model without training; by default it deletes the backup.
    again = make_tiny_classifier()
    epochs = InterruptAt(at=0)
    rerun = kt_fit(again, tiny_dataset, callbacks=[epochs], **kwargs)
    assert rerun.epoch == history.epoch and rerun.unfrozen_blocks == history.unfrozen_blocks
    for got, want in zip(again.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert not backup.exists()


def kt_fit(model, data, **kwargs):
    return two_phase.fit_two_phase(model, data, data, head_lr=1e-2, **kwargs)


# --- 3. one run at a time -------------------------------------------------------------------


def _command(*args, timeout=300):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "keras_transfer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


class SecondRun(keras.callbacks.Callback):
    """While the first run trains, starts `keras-transfer train` into the same folder at
    another image size, and keeps its finished process."""

    def __init__(self, data_dir, model_dir):
        super().__init__()
        self.arguments = (data_dir, model_dir)
        self.process = None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1 and self.process is None:
            data_dir, model_dir = self.arguments
            self.process = _command(
                "train",
                f"--data_dir={data_dir}",
                f"--model_dir={model_dir}",
                "--backbone=mobilenet",
                "--weights=none",
                "--image_size=48",
                "--head_epochs=1",
                "--fine_tune_epochs=1",
                "--verbose=0",
            )


@pytest.mark.slow
def test_a_second_run_into_a_folder_in_use_exits_2_naming_the_first_and_leaves_it_alone(
    image_folder, tmp_path
):
    root = image_folder({"a": 6, "b": 6})
    model_dir = tmp_path / "out"
    second = SecondRun(root, model_dir)
    results = image_classifier_lib.run(
        _config(root, model_dir, cache_features=False), callbacks=[second]
    )
    process = second.process
    assert process.returncode == 2, process.stderr[-3000:]
    error = [line for line in process.stderr.splitlines() if "train: error:" in line]
    assert len(error) == 1, process.stderr[-3000:]
    assert str(model_dir) in error[0] and f"PID {os.getpid()}" in error[0]
    # The first run trained every epoch and wrote only its own settings and results.
    assert results["history"]["epoch"] == [1, 2]
    assert json.loads((model_dir / "config.json").read_text())["image_size"] == 32
    assert json.loads((model_dir / "results.json").read_text())["image_size"] == 32
    assert not (model_dir / reliability.LOCK_FILE).exists()


def _holder(model_dir, pid, host=None):
    model_dir.mkdir(parents=True, exist_ok=True)
    content = {"pid": pid, "host": host or socket.gethostname()}
    (model_dir / reliability.LOCK_FILE).write_text(json.dumps(content))


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_folder_lock_refuses_a_lock_held_by_another_process(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, json, os, socket, sys, time\n"
            f"f = open({str(folder / reliability.LOCK_FILE)!r}, 'w')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\n"
            "f.write(json.dumps({'pid': os.getpid(), 'host': socket.gethostname()})); f.flush()\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(reliability.FolderLockedError, match=f"PID {holder.pid} ") as caught:
            reliability.FolderLock(folder).acquire()
        assert caught.value.exit_code == 2 and str(folder) in str(caught.value)
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: the kernel released its lock, and the file is taken over.
    with reliability.FolderLock(folder) as lock:
        assert json.loads(open(lock.path).read())["pid"] == os.getpid()
    assert os.listdir(folder) == []


def test_folder_lock_in_one_process_refuses_a_second_and_cleans_up(tmp_path):
    folder = tmp_path / "new"
    first = reliability.FolderLock(folder)
    first.acquire()
    with pytest.raises(reliability.FolderLockedError, match=f"PID {os.getpid()} "):
        reliability.FolderLock(folder).acquire()
    first.release()
    # acquire created the folder and nothing else was written: release deletes it.
    assert not folder.exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(image_folder, tmp_path):
    root = image_folder({"a": 6, "b": 6})
    model_dir = tmp_path / "out"
    _holder(model_dir, _dead_pid())
    results = image_classifier_lib.run(_config(root, model_dir, fine_tune_epochs=0))
    assert results["history"]["epoch"] == [1]
    assert not (model_dir / reliability.LOCK_FILE).exists()


def test_without_flock_the_lock_file_content_is_the_lock(tmp_path, monkeypatch):
    import fcntl

    def no_flock(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    folder = tmp_path / "out"
    _holder(folder, _dead_pid())  # stale: taken over
    with reliability.FolderLock(folder) as lock:
        assert json.loads(open(lock.path).read())["pid"] == os.getpid()
        with pytest.raises(reliability.FolderLockedError, match=f"PID {os.getpid()} "):
            reliability.FolderLock(folder).acquire()
    _holder(folder, 12345, host="another-host")  # its PID cannot be checked from here
    with pytest.raises(reliability.FolderLockedError, match="PID 12345 on another-host"):
        reliability.FolderLock(folder).acquire()


def test_the_text_command_takes_the_lock_too(tmp_path):
    from keras_transfer.apps import text_classifier

    config = text_classifier.Config(
        data_path=str(tmp_path / "missing.tsv"), model_dir=str(tmp_path)
    )
    with reliability.FolderLock(tmp_path):
        with pytest.raises(reliability.FolderLockedError, match=f"PID {os.getpid()} "):
            text_classifier.run(config)
    # Unlocked, the same run gets as far as its data, and leaves no lock behind.
    with pytest.raises(FileNotFoundError):
        text_classifier.run(config)
    assert os.listdir(tmp_path) == []


# --- 4. config.json only for runs that train; 5. resume checks every setting -----------------


def test_a_refused_resume_names_the_settings_and_leaves_the_folder_as_it_was(
    image_folder, tmp_path
):
    root = image_folder({"a": 6, "b": 6})
    model_dir = tmp_path / "out"
    config = _config(root, model_dir, cache_features=False)
    with pytest.raises(KeyboardInterrupt):
        image_classifier_lib.run(config, callbacks=[InterruptAt(at=1)])
    written = (model_dir / "config.json").read_bytes()
    assert json.loads(written)["image_size"] == 32

    larger = _config(root, model_dir, cache_features=False, image_size=48)
    with pytest.raises(
        two_phase_state.BackupSettingsError, match=r"image_size \(backup: 32, this run: 48\)"
    ):
        image_classifier_lib.run(larger)
    more_classes = tmp_path / "three"
    write_image_folder(more_classes, {"a": 6, "b": 6, "c": 6}, size=(40, 48))
    with pytest.raises(two_phase_state.BackupSettingsError) as refused:
        image_classifier_lib.run(_config(more_classes, model_dir, cache_features=False))
    assert "class_names" in str(refused.value) and "data_dir" in str(refused.value)
    assert (model_dir / "config.json").read_bytes() == written

    # The same settings resume where the run stopped.
    epochs = InterruptAt()
    results = image_classifier_lib.run(config, callbacks=[epochs])
    assert epochs.epochs == [1]
    assert results["history"]["epoch"] == [1, 2]


def test_a_setting_refused_by_training_does_not_overwrite_config_json(image_folder, tmp_path):
    root = image_folder({"a": 6, "b": 6})
    model_dir = tmp_path / "out"
    image_classifier_lib.run(_config(root, model_dir, fine_tune_epochs=0))
    written = (model_dir / "config.json").read_bytes()
    # A rerun into the finished run's folder is refused before anything is written (it
    # would need --overwrite)...
    with pytest.raises(ValueError, match="--overwrite"):
        image_classifier_lib.run(_config(root, model_dir, unfreeze_blocks="no_such_block"))
    assert (model_dir / "config.json").read_bytes() == written
    results = json.loads((model_dir / "results.json").read_text())
    assert results["config"] == json.loads(written)
    # ...and a setting that training refuses writes no config.json into a new folder.
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="no_such_block"):
        image_classifier_lib.run(_config(root, fresh, unfreeze_blocks="no_such_block"))
    assert not (fresh / "config.json").exists()


# --- 9. exports --------------------------------------------------------------------------


def test_export_replaces_saved_model_without_a_half_deleted_moment_and_cleans_leftovers(
    tmp_path, monkeypatch
):
    model = make_tiny_classifier()
    target = tmp_path / "saved_model"
    export_lib.export_model(model, str(tmp_path), "saved_model")
    stale = tmp_path / ".partial-killed"
    (stale / "saved_model").mkdir(parents=True)
    (stale / "saved_model" / "saved_model.pb").write_bytes(b"0" * 1000)
    (tmp_path / ".partial-abc-model.tflite").write_bytes(b"0")

    # A kill while the old SavedModel is being deleted: one file gone, then the kill.
    real_rmtree = export_lib.shutil.rmtree

    def killed_rmtree(path, *args, **kwargs):
        inside = os.path.commonpath([tmp_path, os.path.abspath(path)]) == str(tmp_path)
        if not inside or os.path.abspath(path) == str(stale):
            return real_rmtree(path, *args, **kwargs)
        for folder, _, files in os.walk(path):
            if files:
                os.remove(os.path.join(folder, files[0]))
                break
        raise KeyboardInterrupt("simulated kill while deleting")

    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    with monkeypatch.context() as patch:
        patch.setattr(export_lib.shutil, "rmtree", killed_rmtree)
        with pytest.raises(KeyboardInterrupt):
            export_lib.export_model(model, str(tmp_path), "saved_model")
    # The stale leftovers of earlier kills are gone; saved_model/ is complete.
    assert not stale.exists() and not (tmp_path / ".partial-abc-model.tflite").exists()
    loaded = tf.saved_model.load(str(target))
    served = loaded.serve(tf.constant(images)).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)

    # The next export deletes what this kill left.
    assert [name for name in os.listdir(tmp_path) if name.startswith(".partial-")]
    monkeypatch.setattr(export_lib.shutil, "rmtree", real_rmtree)
    export_lib.export_model(model, str(tmp_path), "saved_model")
    assert sorted(os.listdir(tmp_path)) == ["saved_model"]


def test_a_rerun_into_a_finished_model_dir_needs_overwrite(image_folder, tmp_path, tiny_run_config):
    from keras_transfer.apps.config import ConfigError

    root = image_folder({"a": 4, "b": 4})
    model_dir = tmp_path / "out"
    settings = dict(fine_tune_epochs=0)
    image_classifier_lib.run(tiny_run_config(root, model_dir, **settings))
    (model_dir / "notes.txt").write_text("mine")
    first_events = sorted(p.name for p in (model_dir / "logs").rglob("*") if p.is_file())

    with pytest.raises(ConfigError, match=r"already holds .*--overwrite") as refused:
        image_classifier_lib.run(tiny_run_config(root, model_dir, **settings))
    assert refused.value.exit_code == 2

    image_classifier_lib.run(tiny_run_config(root, model_dir, **settings, overwrite=True))
    # The earlier run's outputs were replaced (no mixed TensorBoard events); the user's
    # own file stayed.
    events = sorted(p.name for p in (model_dir / "logs").rglob("*") if p.is_file())
    assert len(events) == len(first_events) and set(events).isdisjoint(first_events)
    assert (model_dir / "notes.txt").read_text() == "mine"
