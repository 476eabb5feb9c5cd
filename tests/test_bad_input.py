"""The bad-input matrix: each case is a clear error naming the problem and the fix, or a
counted, logged skip."""

import ctypes
import io
import json
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_tiny_classifier
from conftest import tiny_images
from PIL import Image

import keras_transfer as kt
from keras_transfer.data import folders as data
from keras_transfer.optimizers import layerwise as optimizers
from keras_transfer.training import two_phase as training

# --- image folders --------------------------------------------------------------------


def _encoded(mode, fmt, size=(20, 24), color=None):
    image = Image.new(mode, size, color if color is not None else (200,) * len(mode))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_every_image_format_arrives_as_rgb(image_folder):
    root = image_folder({"a": 4, "b": 4})
    files = {
        "cmyk.jpg": _encoded("CMYK", "JPEG", color=(0, 255, 255, 0)),  # pure red in CMYK
        "gray.jpg": _encoded("L", "JPEG", color=90),
        "alpha.png": _encoded("RGBA", "PNG", color=(0, 0, 255, 10)),
        "palette.gif": _encoded("P", "GIF", color=3),
        "picture.bmp": _encoded("RGB", "BMP", color=(0, 255, 0)),
        "gray.png": _encoded("LA", "PNG", color=(50, 255)),
    }
    for name, content in files.items():
        (root / "a" / name).write_bytes(content)
    loaded = data.image_folder_dataset(
        root, image_size=16, batch_size=16, validation_split=0, shuffle=False
    )
    assert loaded.skipped == []
    assert loaded.num_train == 8 + len(files)
    images, labels = next(iter(loaded.train))
    assert images.shape == (14, 16, 16, 3)
    # The CMYK JPEG became red RGB (a decoder that ignored the colour space would not).
    names = sorted([f"a_{i}.jpg" for i in range(4)] + list(files))
    red = images[names.index("cmyk.jpg")].numpy().mean(axis=(0, 1))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60, red


def test_broken_files_are_counted_logged_and_skipped(image_folder, caplog):
    root = image_folder({"a": 4, "b": 4})
    good = (root / "a" / "a_0.jpg").read_bytes()
    (root / "a" / "zero.jpg").write_bytes(b"")
    (root / "a" / "truncated.jpg").write_bytes(good[:200])
    (root / "b" / "text.png").write_text("not an image")
    (root / "b" / "script.bmp").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "b" / "dangling.jpg").symlink_to(root / "nowhere.jpg")  # unreadable
    with caplog.at_level(logging.WARNING, logger="keras_transfer"):
        loaded = data.image_folder_dataset(root, image_size=16, validation_split=0)
    skipped = sorted(os.path.basename(p) for p in loaded.skipped)
    assert skipped == ["dangling.jpg", "script.bmp", "text.png", "truncated.jpg", "zero.jpg"]
    assert "Skipped 5 file(s)" in caplog.text
    assert loaded.num_train == 8
    assert sum(int(tf.shape(x)[0]) for x, _ in loaded.train) == 8


_LOAD_FOLDER = """
import json, sys
from keras_transfer.data import folders as data
try:
    open(sys.argv[2], "rb").close()
    print("READABLE")  # the permission check is not enforced for this process
except PermissionError:
    loaded = data.image_folder_dataset(sys.argv[1], image_size=16, validation_split=0)
    print("RESULT " + json.dumps({"skipped": loaded.skipped, "num_train": loaded.num_train}))
"""


def _without_file_permission_override():
    """Run as root, but without root's right to read any file: dropping CAP_DAC_OVERRIDE
    and CAP_DAC_READ_SEARCH from the capability bounding set (prctl PR_CAPBSET_DROP) means
    the exec'd process honours file modes. (Switching to `nobody` instead would not work
    where the interpreter lives under /root, which nobody cannot enter.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_unreadable_file_is_skipped(image_folder):
    root = image_folder({"a": 3, "b": 3})
    locked = root / "a" / "a_0.jpg"
    locked.chmod(0)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    try:
        completed = subprocess.run(
            [sys.executable, "-c", _LOAD_FOLDER, str(root), str(locked)],
            preexec_fn=_without_file_permission_override if os.geteuid() == 0 else None,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        raise
    except subprocess.SubprocessError as error:  # raised in preexec_fn, e.g. no CAP_SETPCAP
        pytest.skip(f"cannot drop root's file-permission override: {error}")
    finally:
        locked.chmod(0o644)
    assert completed.returncode == 0, completed.stderr[-3000:]
    if "READABLE" in completed.stdout.splitlines():
        pytest.skip("the mode-0 file stayed readable: file permissions are not enforced here")
    result = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert result, completed.stdout[-2000:]
    loaded = json.loads(result[0][len("RESULT ") :])
    assert loaded == {"skipped": [str(locked)], "num_train": 5}


def test_non_ascii_paths(tmp_path):
    from conftest import write_image_folder

    root = tmp_path / "données" / "图片"
    write_image_folder(root, {"abeille 🐝": 3, "fourmi-ñ": 3})
    os.rename(root / "fourmi-ñ" / "fourmi-ñ_0.jpg", root / "fourmi-ñ" / "été.JPG")
    loaded = data.image_folder_dataset(root, image_size=16, validation_split=0)
    assert loaded.class_names == ["abeille 🐝", "fourmi-ñ"]
    assert loaded.num_train == 6 and loaded.skipped == []
    assert sum(int(tf.shape(x)[0]) for x, _ in loaded.train) == 6


def test_nested_folders_belong_to_their_top_class_and_empty_classes_are_reported(
    image_folder, caplog
):
    from conftest import write_image_folder

    root = image_folder({"a": 2, "b": 2})
    write_image_folder(root / "a" / "more" / "deeper", {"x": 3})
    (root / "c").mkdir()
    with caplog.at_level(logging.WARNING, logger="keras_transfer"):
        loaded = data.image_folder_dataset(root, image_size=16, validation_split=0, shuffle=False)
    assert loaded.class_names == ["a", "b", "c"]
    labels = np.concatenate([y.numpy() for _, y in loaded.train])
    assert np.bincount(labels, minlength=3).tolist() == [5, 2, 0]
    assert "1 of 3 classes have no training images" in caplog.text and "'c'" in caplog.text
    assert any("'c'" in warning for warning in loaded.warnings)  # results.json's warnings


def test_folder_structure_errors(tmp_path, image_folder):
    single = image_folder({"only": 3})
    with pytest.raises(ValueError, match="Only one class folder.*at least two classes"):
        data.image_folder_dataset(single, validation_split=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.image_folder_dataset(tmp_path / "missing")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "x.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="No class folders.*one subfolder per class"):
        data.image_folder_dataset(flat)
    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    (broken / "b").mkdir()
    (broken / "a" / "x.jpg").write_bytes(b"junk")
    with pytest.raises(ValueError, match="No decodable images.*1 skipped"):
        data.image_folder_dataset(broken, validation_split=0)


def test_class_in_train_but_not_in_validation(image_folder):
    image_folder({"a": 3, "b": 3}, subdir="train")
    root = image_folder({"a": 2}, subdir="val").parent
    with pytest.raises(ValueError, match=r"missing in validation \['b'\].*empty folder is fine"):
        data.image_folder_dataset(root, image_size=16)


def test_batch_larger_than_dataset(image_folder):
    root = image_folder({"a": 3, "b": 3})
    loaded = data.image_folder_dataset(root, image_size=16, batch_size=64, validation_split=0)
    assert [int(tf.shape(x)[0]) for x, _ in loaded.train] == [6]  # one partial batch
    with pytest.raises(ValueError, match="batch_size=64.*6 training images.*drop_remainder"):
        data.image_folder_dataset(
            root, image_size=16, batch_size=64, validation_split=0, drop_remainder=True
        )


# --- model building -------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: kt.create_backbone("mobilenet_v4"), ValueError, "mobilenet_v2"),
        (
            lambda: kt.create_backbone("inception_v3", input_shape=(32, 32, 3), weights=None),
            ValueError,
            "75",
        ),
        (
            lambda: kt.create_classifier("mobilenet", 0, input_shape=(32, 32, 3), weights=None),
            ValueError,
            "num_classes must be a positive integer",
        ),
        (
            lambda: kt.create_classifier(
                "mobilenet", 2, head={"dropuot": 0.1}, input_shape=(32, 32, 3), weights=None
            ),
            ValueError,
            r"Unknown head option\(s\) \['dropuot'\].*dropout",
        ),
        (
            lambda: kt.create_backbone("mobilenet", input_shape=(32, 32, 1)),
            ValueError,
            "3",
        ),
        (
            lambda: kt.create_backbone("mobilenet", weights="/no/such/file.h5"),
            FileNotFoundError,
            "/no/such/file.h5",
        ),
    ],
    ids=["unknown_backbone", "too_small", "num_classes", "head_keys", "channels", "weights_path"],
)
def test_model_building_errors(build, error, message):
    with pytest.raises(error, match=message):
        build()


# --- training -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier():
    return make_tiny_classifier()


def test_labels_out_of_range(classifier):
    labels = np.array([0, 1, 5, 1], "int32")
    train = tf.data.Dataset.from_tensor_slices((tiny_images(4), labels)).batch(4)
    with pytest.raises(Exception, match=r"label value of 5.*valid range of \[0, 2\)"):
        training.fit_two_phase(classifier, train, head_epochs=1, fine_tune_epochs=0, verbose=0)


def test_empty_dataset(classifier):
    empty = tf.data.Dataset.from_tensor_slices((tiny_images(4), np.zeros(4, "int32"))).take(0)
    with pytest.raises(ValueError, match="train_data is empty"):
        training.fit_two_phase(classifier, empty.batch(2), head_epochs=1, verbose=0)


def test_unfreeze_beyond_the_blocks_fails_before_training(classifier):
    train = tf.data.Dataset.from_tensor_slices((tiny_images(2), np.zeros(2, "int32"))).batch(2)
    with pytest.raises(ValueError, match=r"top 99 blocks: the backbone has 14.*'all'"):
        training.fit_two_phase(classifier, train, unfreeze=99, verbose=0)
    with pytest.raises(ValueError, match="No block named 'conv_dw_99'"):
        training.fit_two_phase(classifier, train, unfreeze="conv_dw_99", verbose=0)


def test_multiplier_pattern_matching_nothing(classifier):
    optimizer = optimizers.with_layerwise_lr(keras.optimizers.Adam, {"no_such_layer": 0.1})
    classifier.compile(optimizer=optimizer)
    with pytest.raises(ValueError, match="no_such_layer"):
        classifier.fit(tiny_images(2), np.zeros(2, "int32"), epochs=1, verbose=0)
