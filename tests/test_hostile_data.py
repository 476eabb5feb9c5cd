"""Image folders built to break the loader (issue 17, items 1-4 and 7): symlink loops,
decompression bombs, formats dropped without a word, hidden files, empty validation folders,
class names that break labels.txt, and nonsense sizes."""

import io
import logging
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_transfer import data
from keras_transfer.data import decoding


def _encoded(fmt, size=(20, 24), mode="RGB", **save_kwargs):
    buffer = io.BytesIO()
    Image.new(mode, size, (200,) * len(mode)).save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width=20000, height=20000) -> bytes:
    """A valid 1-bit grayscale PNG of `width x height` black pixels: ~50 KB on disk, 1.2 GB
    once decoded to RGB (what TensorFlow's decoder allocates)."""
    row = b"\x00" + bytes((width + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def _labels(dataset):
    return np.concatenate([y.numpy() for _, y in dataset]) if dataset is not None else []


# --- 1. symbolic links ------------------------------------------------------------------


def test_symlink_loop_counts_each_real_file_once_and_keeps_validation_out_of_training(
    image_folder,
):
    root = image_folder({"a": 10, "b": 10})
    (root / "a" / "loop").symlink_to(root / "a")  # a/loop/loop/... would list a/ again
    (root / "b" / "up").symlink_to(root)  # b/up/a, b/up/b: the other class through b/
    (root / "a" / "again.jpg").symlink_to(root / "a" / "a_0.jpg")
    loaded = data.image_folder_dataset(
        root, image_size=16, batch_size=64, validation_split=0.3, shuffle=False
    )
    assert loaded.num_train + loaded.num_validation == 20
    assert np.bincount(_labels(loaded.train), minlength=2).sum() == loaded.num_train
    # No image is both in training and validation.
    train = {x.tobytes() for images, _ in loaded.train for x in images.numpy()}
    validation = {x.tobytes() for images, _ in loaded.validation for x in images.numpy()}
    assert len(train) == loaded.num_train and len(validation) == loaded.num_validation
    assert not train & validation
    duplicate = str(root / "a" / "again.jpg")
    assert duplicate in loaded.skipped and "same file as" in loaded.skip_reasons[duplicate]


def test_a_file_in_two_classes_is_an_error_naming_both(image_folder):
    root = image_folder({"cats": 3, "dogs": 3})
    (root / "dogs" / "cat_in_disguise.jpg").symlink_to(root / "cats" / "cats_1.jpg")
    with pytest.raises(ValueError, match=r"'cats'.*cats_1\.jpg.*'dogs'.*cat_in_disguise\.jpg"):
        data.image_folder_dataset(root, image_size=16, validation_split=0)


def test_a_file_in_training_and_validation_folders_is_an_error(image_folder):
    train = image_folder({"a": 3, "b": 3}, subdir="train")
    val = image_folder({"a": 2, "b": 2}, subdir="val", seed=1)
    (val / "b" / "leak.jpg").symlink_to(train / "b" / "b_0.jpg")
    with pytest.raises(ValueError, match=r"both.*training.*validation.*b_0\.jpg.*leak\.jpg"):
        data.image_folder_dataset(train.parent, image_size=16)


# --- 2. decompression bombs ------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, kwargs",
    [
        ("JPEG", {}),
        ("JPEG", {"progressive": True, "exif": b"Exif\x00\x00" + bytes(3000)}),
        ("PNG", {}),
        ("GIF", {}),
        ("BMP", {}),
        ("WEBP", {}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_image_size_is_read_from_the_header(tmp_path, fmt, kwargs):
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(_encoded(fmt, size=(37, 23), **kwargs))
    assert data.read_image_size(path) == (23, 37)  # (height, width)


def test_header_size_of_extended_webp_and_unknown_files(tmp_path):
    path = tmp_path / "alpha.webp"
    path.write_bytes(_encoded("WEBP", size=(300, 5), mode="RGBA"))  # VP8X with alpha
    assert data.read_image_size(path) == (5, 300)
    (tmp_path / "text.png").write_text("not an image")
    assert data.read_image_size(tmp_path / "text.png") is None
    assert data.read_image_size(tmp_path / "missing.png") is None


def test_decompression_bomb_is_skipped_before_any_decoding(image_folder, monkeypatch, caplog):
    root = image_folder({"a": 3, "b": 3})
    bomb = root / "a" / "bomb.png"
    bomb.write_bytes(png_bomb())
    assert bomb.stat().st_size < 100_000
    decoded = []
    original = decoding.find_undecodable
    monkeypatch.setattr(
        decoding, "find_undecodable", lambda paths: decoded.extend(paths) or original(paths)
    )
    with caplog.at_level(logging.WARNING, logger="keras_transfer"):
        loaded = data.image_folder_dataset(root, image_size=16, validation_split=0)
    assert decoded and str(bomb) not in decoded  # never handed to the decoder
    assert loaded.num_train == 6 and loaded.skipped == [str(bomb)]
    assert "20000x20000" in loaded.skip_reasons[str(bomb)]
    assert "max_pixels=50000000" in loaded.skip_reasons[str(bomb)]
    assert "bomb.png" in caplog.text and "max_pixels" in caplog.text


def test_max_pixels_is_a_parameter(image_folder):
    root = image_folder({"a": 3, "b": 3}, size=(40, 48))
    (root / "a" / "small.png").write_bytes(_encoded("PNG", size=(10, 10)))
    loaded = data.image_folder_dataset(root, image_size=16, validation_split=0, max_pixels=1000)
    assert loaded.num_train == 1 and len(loaded.skipped) == 6
    everything = data.image_folder_dataset(root, image_size=16, validation_split=0, max_pixels=None)
    assert everything.num_train == 7
    with pytest.raises(ValueError, match="max_pixels must be a positive integer or None"):
        data.image_folder_dataset(root, max_pixels=0)


# --- 3. formats, hidden files, empty validation -----------------------------------------


def test_webp_is_decoded_and_tiff_is_reported_by_name(image_folder, caplog):
    root = image_folder({"a": 3, "b": 3})
    (root / "a" / "photo.webp").write_bytes(_encoded("WEBP"))
    (root / "b" / "scan.tif").write_bytes(_encoded("TIFF"))
    (root / "b" / "scan2.TIFF").write_bytes(_encoded("TIFF"))
    (root / "b" / "notes.txt").write_text("not an image, and not named like one")
    with caplog.at_level(logging.INFO, logger="keras_transfer"):
        loaded = data.image_folder_dataset(root, image_size=16, validation_split=0)
    assert loaded.num_train == 7
    tiffs = sorted(str(root / "b" / name) for name in ("scan.tif", "scan2.TIFF"))
    assert loaded.skipped == tiffs
    assert all("TIFF" in loaded.skip_reasons[p] for p in tiffs)
    assert "scan.tif" in caplog.text and "1 other file" in caplog.text


def test_hidden_files_and_folders_are_ignored_and_counted(image_folder, caplog):
    root = image_folder({"a": 3, "b": 3})
    thumbnails = root / "a" / ".thumbnails"
    thumbnails.mkdir()
    (thumbnails / "a_0.jpg").write_bytes((root / "a" / "a_0.jpg").read_bytes())
    (root / "b" / "._b_0.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / ".cache").mkdir()
    with caplog.at_level(logging.INFO, logger="keras_transfer"):
        loaded = data.image_folder_dataset(root, image_size=16, validation_split=0)
    assert loaded.num_train == 6 and loaded.skipped == []
    assert loaded.class_names == ["a", "b"]
    assert "Ignored 3 hidden" in caplog.text


def test_empty_validation_folder_is_a_warning(image_folder, caplog, tmp_path):
    train = image_folder({"a": 3, "b": 3}, subdir="train")
    (train.parent / "val").mkdir()
    with caplog.at_level(logging.WARNING, logger="keras_transfer"):
        loaded = data.image_folder_dataset(train.parent, image_size=16)
    assert loaded.validation is None and loaded.num_validation == 0 and loaded.num_train == 6
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no images" in r.getMessage() and "val" in r.getMessage() for r in warnings)
    assert any("no validation" in w for w in loaded.warnings)
    # Empty class folders in val/ are the same case.
    (train.parent / "val" / "a").mkdir()
    (train.parent / "val" / "b").mkdir()
    loaded = data.image_folder_dataset(train.parent, image_size=16)
    assert loaded.validation is None and any("no validation" in w for w in loaded.warnings)


# --- 4. class names ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["two\nlines", "carriage\rreturn", "line\u2028separator"])
def test_class_name_with_a_line_break_is_rejected(image_folder, name):
    root = image_folder({"a": 2, name: 2})
    with pytest.raises(ValueError, match="line break.*labels.txt.*Rename"):
        data.image_folder_dataset(root, image_size=16, validation_split=0)


def test_package_opens_text_files_as_utf8():
    """Every text-mode `open` in the package names its encoding (a non-UTF-8 locale would
    otherwise write labels and configs it cannot read back on another machine)."""
    import ast
    import pathlib

    package = pathlib.Path(data.__file__).parent
    missing = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open"):
                continue
            mode = node.args[1].value if len(node.args) > 1 else "r"
            keywords = {k.arg for k in node.keywords}
            if "b" not in mode and "encoding" not in keywords:
                missing.append(f"{path.name}:{node.lineno}")
    assert missing == []


# --- 7. sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image_size, message",
    [
        ("32", "image_size must be an int or a .height, width. pair of ints, got '32'"),
        (0, "image_size must be positive, got 0"),
        ((32, -1), r"image_size must be positive, got \(32, -1\)"),
        ((32, 32, 3), "image_size must be an int or a .height, width. pair"),
        (32.5, "image_size must be an int"),
    ],
)
def test_bad_image_size_names_the_argument(image_folder, image_size, message):
    root = image_folder({"a": 2, "b": 2})
    with pytest.raises(ValueError, match=message):
        data.image_folder_dataset(root, image_size=image_size)


def test_bad_batch_size_names_the_argument(image_folder):
    root = image_folder({"a": 2, "b": 2})
    for batch_size in ("32", 0, 2.0, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            data.image_folder_dataset(root, image_size=16, batch_size=batch_size)


def test_a_folder_with_every_data_case_trains_to_the_end(image_folder):
    """Issue 17's "done when": loops, a bomb, webp/tiff, hidden files, an empty val/ — it
    loads, names every skipped file with its reason, and uses each real image once."""
    import keras

    from keras_transfer import heads
    from keras_transfer.backbones import registry as backbones

    train = image_folder({"a": 4, "b": 4}, subdir="train")
    (train.parent / "val").mkdir()
    (train / "a" / "loop").symlink_to(train / "a")
    (train / "a" / "bomb.png").write_bytes(png_bomb())
    (train / "b" / "photo.webp").write_bytes(_encoded("WEBP"))
    (train / "b" / "scan.tiff").write_bytes(_encoded("TIFF"))
    (train / "b" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (train / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    loaded = data.image_folder_dataset(train.parent, image_size=32, batch_size=4)
    assert loaded.num_train == 9 and loaded.validation is None
    assert sorted(os.path.basename(p) for p in loaded.skip_reasons) == [
        "bomb.png",
        "broken.jpg",
        "scan.tiff",
    ]
    assert sorted(loaded.skipped) == sorted(loaded.skip_reasons)
    backbone = backbones.create_backbone("mobilenet", input_shape=(32, 32, 3), weights=None)
    model = heads.create_classifier(backbone, 2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(loaded.train, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1
    assert sum(int(tf.shape(x)[0]) for x, _ in loaded.train) == 9
