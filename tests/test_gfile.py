"""Paths on any `tf.io.gfile` file system (`gs://` on a Colab TPU): data folders, label
tables, the command's model folder and `predict` reading it, feature caches and two-phase
backups, all through `keras_transfer.utils.files`. Tested on TensorFlow's in-memory file
system, `ram://`, which goes through the same gfile calls as `gs://` without an account."""

import csv
import gc
import json
import os
import socket
import uuid

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_images
from conftest import write_image_folder
from interruption import InterruptAt

import keras_transfer as kt
from keras_transfer.apps import image_classifier
from keras_transfer.apps import predict as predict_lib
from keras_transfer.data import listing
from keras_transfer.training import extraction
from keras_transfer.training import feature_writer
from keras_transfer.training import two_phase_state
from keras_transfer.utils import files
from keras_transfer.utils import reliability


@pytest.fixture
def ram_root():
    """A fresh `ram://` folder, deleted after the test (the file system lives as long as
    the process)."""
    root = f"ram://keras_transfer_test_{uuid.uuid4().hex[:12]}"
    tf.io.gfile.makedirs(root)
    yield root
    tf.io.gfile.rmtree(root)


def upload(local, remote):
    """Copies the local folder `local` to `remote` with gfile itself (every folder made
    explicitly: ram:// lists only folders that were made)."""
    for root, _, names in os.walk(local):
        relative = os.path.relpath(root, local)
        folder = remote if relative == "." else f"{remote}/{relative}"
        tf.io.gfile.makedirs(folder)
        for name in names:
            tf.io.gfile.copy(os.path.join(root, name), f"{folder}/{name}", overwrite=True)


def relative_paths(paths, root):
    return [files.relpath(path, root) for path in paths]


# --- the files module ----------------------------------------------------------------------


def test_ram_has_the_operations_the_package_uses(ram_root):
    folder = f"{ram_root}/a/b"
    tf.io.gfile.makedirs(folder)
    with tf.io.gfile.GFile(f"{folder}/x.txt", "w") as f:
        f.write("one")
    assert tf.io.gfile.listdir(f"{ram_root}/a") == ["b"]
    assert [root for root, _, _ in tf.io.gfile.walk(ram_root)] == [
        ram_root,
        f"{ram_root}/a",
        folder,
    ]
    assert tf.io.gfile.glob(f"{folder}/*.txt") == [f"{folder}/x.txt"]
    with tf.io.gfile.GFile(f"{folder}/y.txt", "w") as f:
        f.write("two")
    tf.io.gfile.rename(f"{folder}/y.txt", f"{folder}/x.txt", overwrite=True)
    with tf.io.gfile.GFile(f"{folder}/x.txt") as f:
        assert f.read() == "two"


def test_files_answer_on_ram_as_os_does_on_a_local_disk(ram_root, tmp_path):
    for root in (str(tmp_path), ram_root):
        files.makedirs(os.path.join(root, "sub", "deeper"))
        with files.open_file(os.path.join(root, "sub", "a.txt"), "w", encoding="utf-8") as f:
            f.write("héllo\r\nworld\n")
        with files.open_file(os.path.join(root, "sub", "b.bin"), "wb") as f:
            f.write(b"0123456789")
        assert sorted(files.listdir(os.path.join(root, "sub"))) == ["a.txt", "b.bin", "deeper"]
        assert files.isdir(os.path.join(root, "sub")) and not files.isfile(
            os.path.join(root, "sub")
        )
        assert files.isfile(os.path.join(root, "sub", "a.txt"))
        assert files.getsize(os.path.join(root, "sub", "b.bin")) == 10
        with files.open_file(os.path.join(root, "sub", "a.txt"), encoding="utf-8") as f:
            assert f.read() == "héllo\nworld\n"  # universal newlines, as open() reads
        with files.open_file(os.path.join(root, "sub", "a.txt"), newline="") as f:
            assert f.read() == "héllo\r\nworld\n"
        with files.open_file(os.path.join(root, "sub", "b.bin"), "rb") as f:
            f.seek(3)
            assert f.read(2) == b"34"
            f.seek(2, os.SEEK_CUR)
            assert f.read() == b"789"
        walked = [(files.relpath(r, root), sorted(d), sorted(n)) for r, d, n in files.walk(root)]
        assert walked == [
            (".", ["sub"], []),
            ("sub", ["deeper"], ["a.txt", "b.bin"]),
            (os.path.join("sub", "deeper"), [], []),
        ]
        entries = {e.name: e.is_dir() for e in files.scandir(os.path.join(root, "sub"))}
        assert entries == {"a.txt": False, "b.bin": False, "deeper": True}
        files.replace(os.path.join(root, "sub", "b.bin"), os.path.join(root, "sub", "a.txt"))
        with files.open_file(os.path.join(root, "sub", "a.txt"), "rb") as f:
            assert f.read() == b"0123456789"
        with pytest.raises(FileNotFoundError):
            files.open_file(os.path.join(root, "sub", "missing.txt"), "rb")
        with pytest.raises(FileNotFoundError):
            files.open_file(os.path.join(root, "sub", "missing.txt"))
        files.rmtree(os.path.join(root, "sub"))
        assert not files.exists(os.path.join(root, "sub"))


def test_a_remote_path_keeps_its_scheme():
    assert files.is_remote("gs://bucket/run") and files.is_remote("ram://x")
    assert not files.is_remote("runs/x") and not files.is_remote("C:\\runs\\x")
    assert files.abspath("gs://bucket/run") == "gs://bucket/run"
    assert files.realpath("gs://bucket/run") == "gs://bucket/run"
    assert files.relpath("gs://bucket/run/a/b.jpg", "gs://bucket/run") == "a/b.jpg"


def test_atomic_writes_on_ram_leave_the_old_file_after_a_failed_write(ram_root):
    path = f"{ram_root}/out/results.json"

    def write(content):
        def writer(temporary):
            assert temporary != path and temporary.startswith(f"{ram_root}/out/.partial-")
            with files.open_file(temporary, "w", encoding="utf-8") as f:
                f.write(content)
            if content == "broken":
                raise OSError("disk full")

        return writer

    reliability.write_atomically(path, write("first"))
    with pytest.raises(OSError, match="disk full"):
        reliability.write_atomically(path, write("broken"))
    assert tf.io.gfile.listdir(f"{ram_root}/out") == ["results.json"]  # no temporary left
    with tf.io.gfile.GFile(path) as f:
        assert f.read() == "first"
    reliability.copy_atomically(path, f"{ram_root}/out/copy.json")
    assert reliability.file_sha256(path) == reliability.file_sha256(f"{ram_root}/out/copy.json")


def test_the_lock_of_a_ram_folder_refuses_a_second_run_and_takes_over_a_stale_one(ram_root):
    folder = f"{ram_root}/run"
    with reliability.FolderLock(folder):
        with tf.io.gfile.GFile(f"{folder}/{reliability.LOCK_FILE}") as f:
            assert json.loads(f.read())["pid"] == os.getpid()
        with pytest.raises(reliability.FolderLockedError, match=f"PID {os.getpid()}"):
            reliability.FolderLock(folder).acquire()
    assert not tf.io.gfile.exists(folder)  # the lock made it, nothing was written: removed
    tf.io.gfile.makedirs(folder)
    with tf.io.gfile.GFile(f"{folder}/{reliability.LOCK_FILE}", "w") as f:
        # A PID beyond the kernel's limit: not running.
        f.write(json.dumps({"pid": 2**22 + 1, "host": socket.gethostname()}))
    with reliability.FolderLock(folder):
        with tf.io.gfile.GFile(f"{folder}/{reliability.LOCK_FILE}") as f:
            assert json.loads(f.read())["pid"] == os.getpid()
    with tf.io.gfile.GFile(f"{folder}/{reliability.LOCK_FILE}", "w") as f:
        f.write(json.dumps({"pid": 1, "host": "another-machine"}))
    with pytest.raises(reliability.FolderLockedError, match="delete that file"):
        reliability.FolderLock(folder).acquire()


# --- data -----------------------------------------------------------------------------------


def test_image_folder_on_ram_loads_as_its_local_copy(ram_root, tmp_path):
    local = tmp_path / "images"
    write_image_folder(local / "train", {"ants": 6, "bees": 6}, size=(40, 40))
    write_image_folder(local / "test", {"ants": 2, "bees": 2}, size=(40, 40), seed=1)
    (local / "train" / "ants" / "broken.jpg").write_bytes(b"not an image")
    (local / "train" / "bees" / ".hidden.jpg").write_bytes(b"ignored")
    upload(local, f"{ram_root}/images")
    found = {}
    for root in (str(local), f"{ram_root}/images"):
        files_ = listing.list_dataset_folder(root, validation_split=0.25)
        found[root] = (
            files_.class_names,
            relative_paths(files_.train_paths, root),
            relative_paths(files_.validation_paths, root),
            relative_paths(files_.test_paths, root),
            relative_paths(files_.skip_reasons, root),
        )
    remote = found[f"{ram_root}/images"]
    assert remote == found[str(local)]
    assert remote[4] == [os.path.join("train", "ants", "broken.jpg")]
    assert len(remote[1]) + len(remote[2]) == 12 and len(remote[3]) == 4
    local_data = kt.image_folder_dataset(local, image_size=32, batch_size=4, shuffle=False)
    remote_data = kt.image_folder_dataset(
        f"{ram_root}/images", image_size=32, batch_size=4, shuffle=False
    )
    for split in ("train", "validation", "test"):
        for (x, y), (x_local, y_local) in zip(
            getattr(remote_data, split), getattr(local_data, split), strict=True
        ):
            np.testing.assert_array_equal(x, x_local)
            np.testing.assert_array_equal(y, y_local)
    assert kt.data.read_image_size(f"{ram_root}/images/train/ants/ants_0.jpg") == (40, 40)
    assert kt.data.read_image_size(f"{ram_root}/images/missing.jpg") is None


def test_records_on_ram_read_back_as_their_local_copy(ram_root, tmp_path):
    # Records written on the local disk, copied to the bucket, read from there (the TPU way).
    local = tmp_path / "images"
    write_image_folder(local, {"ants": 5, "bees": 4}, size=(40, 40))
    kt.data.write_records(local, tmp_path / "records", shard_size=3, validation_split=0.25)
    upload(tmp_path / "records", f"{ram_root}/records")
    remote = f"{ram_root}/records"
    assert kt.data.is_records_folder(remote)
    assert kt.data.read_manifest(remote) == kt.data.read_manifest(tmp_path / "records")
    batches = {}
    for root in (str(tmp_path / "records"), remote):
        data = kt.data.records_dataset(root, image_size=32, batch_size=4, shuffle=False)
        batches[root] = [(np.asarray(x), np.asarray(y)) for x, y in data.validation]
    for (x, y), (x_local, y_local) in zip(
        batches[remote], batches[str(tmp_path / "records")], strict=True
    ):
        np.testing.assert_array_equal(x, x_local)
        np.testing.assert_array_equal(y, y_local)
    tf.io.gfile.remove(f"{remote}/{kt.data.MANIFEST_FILE}")
    assert not kt.data.is_records_folder(remote)


def test_task_plots_and_thresholds_on_ram(ram_root):
    # What a multilabel or regression run writes beside its model, and predict reads back.
    from keras_transfer.apps import predict_tasks
    from keras_transfer.diagnostics import label_reports

    report = label_reports.multilabel_report(
        [[1, 0], [0, 1], [1, 1]], [[0.9, 0.2], [0.3, 0.8], [0.7, 0.6]], ["cat", "dog"]
    )
    label_reports.plot_label_f1(report, f"{ram_root}/label_f1.png")
    label_reports.plot_predicted_vs_true(
        [[1.0], [2.0], [3.0]], [[1.1], [1.9], [3.2]], ["age"], f"{ram_root}/scatter.png"
    )
    for name in ("label_f1.png", "scatter.png"):
        with tf.io.gfile.GFile(f"{ram_root}/{name}", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with tf.io.gfile.GFile(f"{ram_root}/thresholds.json", "w") as f:
        f.write('{"cat": 0.25, "dog": 0.75}')
    assert predict_tasks.load_thresholds(ram_root, ["dog", "cat"]) == [0.75, 0.25]


def test_label_table_on_ram_loads_and_names_its_bad_rows(ram_root, tmp_path):
    local = tmp_path / "images"
    write_image_folder(local, {"red": 5, "blue": 5}, size=(24, 24))
    rows = [[f"{name}/{name}_{i}.jpg", name] for name in ("red", "blue") for i in range(5)]
    rows.append(["red/gone.jpg", "red"])  # row 11 (line 12): no such file
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["file", "colour"], *rows])
    upload(local, f"{ram_root}/images")
    tf.io.gfile.copy(str(table), f"{ram_root}/labels.csv")
    loaded = {}
    for csv_path, root in ((table, local), (f"{ram_root}/labels.csv", f"{ram_root}/images")):
        loaded[str(root)] = kt.image_table_dataset(
            csv_path, root, "file", "colour", image_size=32, batch_size=4, bad_rows="skip",
            shuffle=False,
        )  # fmt: skip
    remote, on_disk = loaded[f"{ram_root}/images"], loaded[str(local)]
    assert remote.class_names == on_disk.class_names == ["blue", "red"]
    assert (remote.num_train, remote.num_validation) == (on_disk.num_train, on_disk.num_validation)
    assert remote.num_train + remote.num_validation == 10
    assert remote.skip_reasons == {"row 11 (line 12)": "no file 'red/gone.jpg' under image_root"}
    for (x, y), (x_local, y_local) in zip(remote.train, on_disk.train, strict=True):
        np.testing.assert_array_equal(x, x_local)
        np.testing.assert_array_equal(y, y_local)


# --- feature caches and backups -------------------------------------------------------------


def test_feature_cache_on_ram_is_written_and_read_back(ram_root):
    images = tiny_images(20)
    labels = (np.arange(20) % 3).astype("int32")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    backbone = kt.create_backbone("mobilenet", input_shape=(32, 32, 3), weights=None, alpha=0.25)
    extractor = extraction.feature_extractor(backbone)
    in_memory = extraction.extract_features(extractor, dataset, verbose=0)
    cached = extraction.extract_features(
        extractor, dataset, cache_dir=f"{ram_root}/cache", max_memory_bytes=1000, verbose=0
    )
    assert cached.on_disk and cached.path.startswith(f"{ram_root}/cache/keras_transfer_features_")
    assert isinstance(cached.features, feature_writer.FileRows)
    assert files.getsize(f"{cached.path}/features.f32") == 20 * 256 * 4
    np.testing.assert_allclose(np.asarray(cached.features), in_memory.features, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(cached.labels), labels)
    np.testing.assert_allclose(cached.features[[7, 2, 3]], in_memory.features[[7, 2, 3]], atol=1e-6)
    seen = []
    for x, y in cached.as_dataset(6, shuffle=True, seed=0):
        for row, label in zip(np.asarray(x), np.asarray(y)):
            index = int(np.argmin(np.abs(in_memory.features - row).sum(axis=1)))
            assert label == labels[index]
            seen.append(index)
    assert sorted(seen) == list(range(20))
    path = cached.path
    del cached
    gc.collect()
    assert not tf.io.gfile.exists(path)  # the extraction's own files, gone with it


def test_two_phase_backup_on_ram_resumes_an_interrupted_run(ram_root, new_tiny_classifier):
    labels = (np.arange(16) % 2).astype("int32")
    dataset = tf.data.Dataset.from_tensor_slices((tiny_images(16), labels)).batch(8)
    backup = f"{ram_root}/backup"
    kwargs = dict(head_epochs=1, fine_tune_epochs=3, head_lr=1e-2, verbose=0, backup_dir=backup)
    with pytest.raises(KeyboardInterrupt):
        kt.fit_two_phase(new_tiny_classifier(), dataset, callbacks=[InterruptAt(2)], **kwargs)
    state = f"{backup}/{two_phase_state.STATE_FILE}"
    with tf.io.gfile.GFile(state) as f:
        recorded = json.load(f)
    assert recorded["head_done"] and sorted(recorded["epochs"]) == ["0", "1"]
    assert tf.io.gfile.exists(f"{backup}/fine_tune/latest.weights.h5")
    assert not [n for n in tf.io.gfile.listdir(backup) if n.startswith(".partial-")]
    recorder = InterruptAt()
    history = kt.fit_two_phase(new_tiny_classifier(), dataset, callbacks=[recorder], **kwargs)
    assert recorder.epochs == [2, 3]  # only the epochs the interruption prevented
    assert history.epoch == [0, 1, 2, 3]
    assert not tf.io.gfile.exists(backup)  # deleted once the run finished


# --- the command's run folder ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ram_run(tmp_path_factory, tiny_run_config):
    """One run of the command's logic (`image_classifier.run`) from an image folder on
    ram:// into `model_dir=ram://...`, resumable and exporting TFLite."""
    local = tmp_path_factory.mktemp("gfile_run") / "images"
    write_image_folder(local, {"ants": 6, "bees": 6}, size=(40, 40))
    root = f"ram://keras_transfer_run_{uuid.uuid4().hex[:12]}"
    upload(local, f"{root}/images")
    config = tiny_run_config(f"{root}/images", f"{root}/run", resume=True, export="tflite")
    results = image_classifier.run(config)
    yield root, results
    tf.io.gfile.rmtree(root)


def test_the_command_writes_its_run_folder_on_ram(ram_run):  # the run: ~20 s on 2 loaded cores
    root, results = ram_run
    run = f"{root}/run"
    assert sorted(tf.io.gfile.listdir(run)) == [
        "config.json",
        "confusion_matrix.png",
        "export.json",
        "labels.txt",
        "logs",
        "model.keras",
        "model.tflite",
        "results.json",
        "training_curves.png",
    ]  # no lock, no backup, no temporary file left
    with tf.io.gfile.GFile(f"{run}/results.json") as f:
        saved = json.load(f)
    assert saved["class_names"] == ["ants", "bees"] == results["class_names"]
    assert saved["num_train"] + saved["num_validation"] == 12
    with tf.io.gfile.GFile(f"{run}/config.json") as f:
        assert json.load(f)["data_dir"] == f"{root}/images"  # not made a local path
    with tf.io.gfile.GFile(f"{run}/labels.txt") as f:
        assert f.read() == "ants\nbees\n"
    with tf.io.gfile.GFile(f"{run}/training_curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert tf.io.gfile.glob(f"{run}/logs/*/events.out.tfevents.*")
    with tf.io.gfile.GFile(f"{run}/export.json") as f:
        export = json.load(f)["exports"]["model.tflite"]
    assert export["written"] and export["bytes"] == files.getsize(f"{run}/model.tflite")
    assert export["model_sha256"] == reliability.file_sha256(f"{run}/model.keras")


def test_predict_reads_the_run_folder_on_ram(ram_run):
    root, _ = ram_run
    run = f"{root}/run"
    model, labels = predict_lib.load_trained(run)
    assert labels == ["ants", "bees"]
    settings = predict_lib.decode_settings(run)
    rows, skipped = predict_lib.predict_files(
        model, labels, [f"{root}/images/bees", f"{root}/images/missing.jpg"], top_k=2, **settings
    )
    assert skipped == {f"{root}/images/missing.jpg": "no such file or folder"}
    assert [row["file"] for row in rows] == [f"{root}/images/bees/bees_{i}.jpg" for i in range(6)]
    images = np.stack([predict_lib.load_image(row["file"], model, **settings) for row in rows])
    expected = model.predict(images, verbose=0)
    for row, probabilities in zip(rows, expected):
        order = np.argsort(-probabilities, kind="stable")
        assert row["labels"] == [labels[i] for i in order]
        np.testing.assert_allclose(row["probabilities"], probabilities[order], atol=1e-5)
    (single,) = kt.predict_images(run, f"{root}/images/bees/bees_0.jpg", top_k=2)
    assert single["labels"] == rows[0]["labels"]
    np.testing.assert_allclose(single["probabilities"], rows[0]["probabilities"], atol=1e-5)


def test_a_model_saved_to_ram_loads_back(ram_root, tiny_classifier):
    path = f"{ram_root}/models/model.keras"
    kt.save_model(tiny_classifier, path)
    assert tf.io.gfile.listdir(f"{ram_root}/models") == ["model.keras"]
    loaded = kt.load_model(path)
    images = tiny_images(4)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), tiny_classifier.predict(images, verbose=0), atol=1e-6
    )
    with tf.io.gfile.GFile(path, "rb") as f:
        assert f.read(2) == b"PK"  # the .keras zip, written whole
