"""A JPEG's EXIF orientation is applied wherever images are decoded: a rotated phone photo
trains and predicts upright. Every test file is a real JPEG whose stored pixels, turned as its
orientation tag (1 to 8, both TIFF byte orders) says, show one asymmetric reference image: a
red block in the top-left corner of a blue 48x64 image. Viewers (PIL's `exif_transpose` here)
show every file as the reference; so must the loaders' training, validation and test splits,
`predict` and the export check. A truncated or malformed tag leaves the pixels as stored."""

import io
import json
import os
import struct
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from PIL import ImageOps

import keras_transfer as kt
from keras_transfer import data as data_lib
from keras_transfer.apps import export_check
from keras_transfer.apps import predict as predict_lib
from keras_transfer.data import exif

HEIGHT, WIDTH = 48, 64
RED, BLUE = (250, 20, 20), (40, 80, 200)
ORIENTATIONS = range(1, 9)
BYTE_ORDERS = ("MM", "II")  # big-endian (what PIL writes), little-endian (most cameras)

# How the stored pixels are made from the upright reference: the inverse of what a viewer does
# for each tag (rotate 90 clockwise for 6 is undone by PIL's ROTATE_90, counter-clockwise).
_STORE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def reference(scale=1):
    """The upright image: blue, with a red block in the top-left corner (16 px a side at
    scale 1, on JPEG's 8-pixel block grid so that compression barely blurs it)."""
    image = np.empty((HEIGHT * scale, WIDTH * scale, 3), np.uint8)
    image[:] = BLUE
    image[: 16 * scale, : 16 * scale] = RED
    return image


def stored(upright, orientation):
    """The pixels a camera stores for `upright` when it records `orientation`."""
    image = Image.fromarray(upright)
    method = _STORE[orientation]
    return np.asarray(image if method is None else image.transpose(method))


def exif_segment(orientation, byte_order="MM", keep=None, value_type=3):
    """The data of an APP1 segment: the EXIF header and a TIFF structure whose IFD0 holds
    only the orientation tag; `keep`: only the first `keep` bytes of the TIFF part."""
    end = "<" if byte_order == "II" else ">"
    tiff = byte_order.encode() + struct.pack(end + "HI", 42, 8) + struct.pack(end + "H", 1)
    value = struct.pack(end + "HH", orientation, 0) if value_type == 3 else b"\0\0\0\0"
    tiff += struct.pack(end + "HHI", 0x0112, value_type, 1) + value + struct.pack(end + "I", 0)
    return exif.EXIF_HEADER + (tiff if keep is None else tiff[:keep])


def write_jpeg(path, orientation, byte_order="MM", upright=None, segment=None):
    """A JPEG (quality 95, no chroma subsampling) showing `upright` with this orientation."""
    upright = reference() if upright is None else upright
    pixels = stored(upright, orientation)
    segment = exif_segment(orientation, byte_order) if segment is None else segment
    Image.fromarray(pixels).save(path, "JPEG", quality=95, subsampling=0, exif=segment)
    return path


def assert_upright(image, upright=None, what=""):
    """`image` equals `upright` (the reference unless given) within JPEG's error, and each
    corner has its colour (for the reference: red top-left, blue in the other three)."""
    upright = reference() if upright is None else upright
    image = np.asarray(image).astype("float32")
    assert image.shape == upright.shape, what
    difference = np.abs(image - upright)
    assert difference.mean() < 2.0 and difference.max() <= 24, what
    side = 8 * upright.shape[0] // HEIGHT
    for rows, columns in [
        (slice(0, side), slice(0, side)),
        (slice(0, side), slice(-side, None)),
        (slice(-side, None), slice(0, side)),
        (slice(-side, None), slice(-side, None)),
    ]:
        colour = upright[rows, columns].mean(axis=(0, 1))
        assert colour.tolist() in (list(RED), list(BLUE))  # a corner of one colour
        found = image[rows, columns].mean(axis=(0, 1))
        assert np.abs(found - colour).max() < 6, f"{what}: corner {rows}, {columns}"


@pytest.fixture
def oriented_files(tmp_path):
    """`{(orientation, byte order): path}`: the 16 JPEGs, all showing the reference."""
    folder = tmp_path / "oriented"
    folder.mkdir()
    return {
        (o, order): write_jpeg(folder / f"{order}_{o}.jpg", o, order)
        for o in ORIENTATIONS
        for order in BYTE_ORDERS
    }


def test_a_viewer_shows_every_test_file_as_the_reference(oriented_files):
    # The ground truth the other tests hold the package to: PIL's reading of the tag.
    for key, path in oriented_files.items():
        with Image.open(path) as image:
            assert image.getexif()[0x0112] == key[0]
            assert_upright(np.asarray(ImageOps.exif_transpose(image)), what=str(key))


def test_the_orientation_tag_is_read_in_both_byte_orders(oriented_files):
    for (orientation, order), path in oriented_files.items():
        contents = path.read_bytes()
        assert int(exif.read_exif_orientation(tf.constant(contents))) == orientation
        assert exif.tiff_orientation(exif_segment(orientation, order)) == orientation


def test_each_orientation_turns_the_stored_pixels_exactly_as_pil_does():
    upright = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for orientation in ORIENTATIONS:
        turned = exif.apply_exif_orientation(tf.constant(stored(upright, orientation)), orientation)
        np.testing.assert_array_equal(turned.numpy(), upright, err_msg=str(orientation))
    # A value outside 1..8 leaves the image as stored.
    np.testing.assert_array_equal(exif.apply_exif_orientation(upright, 9).numpy(), upright)


def test_training_validation_and_test_splits_decode_every_orientation_upright(tmp_path):
    # train/, val/ and test/ each hold both byte orders (one class each) of all 8 tags.
    root = tmp_path / "images"
    for split in ("train", "val", "test"):
        for order in BYTE_ORDERS:
            (root / split / order).mkdir(parents=True)
            for o in ORIENTATIONS:
                write_jpeg(root / split / order / f"{o}.jpg", o, order)
    loaded = kt.image_folder_dataset(
        root, image_size=(HEIGHT, WIDTH), batch_size=4, crop_fraction=1.0, shuffle=False
    )
    splits = {
        "train": loaded.train,
        "train_unaugmented": loaded.train_unaugmented,
        "validation": loaded.validation,
        "test": loaded.test,
    }
    for name, dataset in splits.items():
        images = np.concatenate([batch.numpy() for batch, _ in dataset])
        assert len(images) == 16, name
        for i, image in enumerate(images):
            assert_upright(image, what=f"{name} image {i}")


def test_predict_reads_every_orientation_upright(oriented_files):
    for key, path in oriented_files.items():
        image = predict_lib.load_image(str(path), (HEIGHT, WIDTH), crop_fraction=1.0)
        assert_upright(image, what=str(key))
        # The validation crop of the default crop_fraction cuts the same upright image.
        cropped = predict_lib.load_image(str(path), (42, 56))
        np.testing.assert_array_equal(
            cropped, data_lib.central_crop(data_lib.decode_for_model(path, (48, 64), 1.0), (42, 56))
        )


def test_the_export_check_reads_every_orientation_upright(oriented_files):
    inputs = keras.Input((HEIGHT, WIDTH, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    paths = [str(path) for path in oriented_files.values()]
    images = export_check.read_images(paths, model, crop_fraction=1.0)
    assert images.shape == (16, HEIGHT, WIDTH, 3)
    for path, image in zip(paths, images, strict=True):
        assert_upright(image, what=os.path.basename(path))


def test_read_image_size_gives_the_upright_size(oriented_files):
    # Quarter turns (5 to 8) store 64x48 pixels that show as 48 high, 64 wide.
    for key, path in oriented_files.items():
        assert data_lib.read_image_size(path) == (HEIGHT, WIDTH), key


def test_a_large_turned_jpeg_is_ratio_decoded_on_its_stored_sides(tmp_path, monkeypatch):
    # Shown 192x256; stored 256x192 (tag 6). For 48x64 the stored sides compare with 64x48:
    # min(256 // 64, 192 // 48) = 4 -> ratio 4 (unswapped it would be ratio 2).
    upright = reference(scale=4)
    path = write_jpeg(tmp_path / "large.jpg", 6, upright=upright)
    ratios = []
    decode_jpeg = tf.io.decode_jpeg

    def recording(contents, **kwargs):
        ratios.append(kwargs.get("ratio", 1))
        return decode_jpeg(contents, **kwargs)

    monkeypatch.setattr(tf.io, "decode_jpeg", recording)
    image = data_lib.decode_and_resize(tf.constant(str(path)), (HEIGHT, WIDTH))
    assert ratios == [4]
    assert_upright(image.numpy(), what="ratio 4")
    assert data_lib.read_image_size(path) == (192, 256)


@pytest.mark.parametrize("keep", [0, 1, 2, 4, 7, 8, 9, 10, 12, 16, 18, 20, 21])
def test_a_truncated_exif_segment_leaves_the_image_as_stored(tmp_path, keep):
    # The TIFF part cut after `keep` bytes (the orientation entry ends at byte 22): no tag.
    path = write_jpeg(tmp_path / "cut.jpg", 6, segment=exif_segment(6, "II", keep=keep))
    assert int(exif.read_exif_orientation(tf.constant(path.read_bytes()))) == 1
    assert exif.tiff_orientation(exif_segment(6, "II", keep=keep)) == 1
    image = data_lib.decode_and_resize(tf.constant(str(path)), (WIDTH, HEIGHT), "squash")
    assert_upright(image.numpy(), stored(reference(), 6))
    assert data_lib.read_image_size(path) == (WIDTH, HEIGHT)  # as stored


def test_every_prefix_of_a_file_reads_orientation_1_until_the_entry_is_whole(tmp_path):
    contents = write_jpeg(tmp_path / "full.jpg", 8, "MM").read_bytes()
    app1 = contents.index(b"\xff\xe1")
    # Marker and length, EXIF header, TIFF header, entry count, the 12-byte entry.
    entry_end = app1 + 4 + len(exif.EXIF_HEADER) + 8 + 2 + 12
    for cut in range(entry_end + 4):
        expected = 8 if cut >= entry_end else 1
        assert int(exif.read_exif_orientation(tf.constant(contents[:cut]))) == expected, cut
        assert exif.jpeg_orientation(io.BytesIO(contents[:cut])) == expected, cut


def test_exif_after_jfif_xmp_and_icc_segments_is_found(tmp_path):
    contents = write_jpeg(tmp_path / "plain.jpg", 6, "II").read_bytes()
    assert contents[2:4] == b"\xff\xe0"  # PIL writes JFIF's APP0 first, then EXIF
    jfif_end = 4 + struct.unpack(">H", contents[4:6])[0]
    xmp = b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>"
    icc = b"ICC_PROFILE\0\x01\x01" + bytes(100)
    extra = b"".join(
        b"\xff" + marker + struct.pack(">H", len(data) + 2) + data
        for marker, data in ((b"\xe1", xmp), (b"\xe2", icc))
    )
    path = tmp_path / "segments.jpg"
    path.write_bytes(contents[:jfif_end] + extra + contents[jfif_end:])
    assert int(exif.read_exif_orientation(tf.constant(path.read_bytes()))) == 6
    with open(path, "rb") as f:
        assert exif.jpeg_orientation(f) == 6
    assert_upright(data_lib.decode_for_model(path, (HEIGHT, WIDTH), 1.0).numpy())
    assert data_lib.read_image_size(path) == (HEIGHT, WIDTH)


@pytest.mark.parametrize(
    "segment",
    [
        exif_segment(6, "MM")[:6] + b"XX" + exif_segment(6, "MM")[8:],  # unknown byte order
        exif_segment(6, "II").replace(b"*\0", b"+\0", 1),  # not TIFF's 42
        exif_segment(6, "MM")[:10] + b"\xff\xff\xff\xf0" + exif_segment(6, "MM")[14:],
        exif_segment(0, "MM"),  # out of range
        exif_segment(9, "II"),
        exif_segment(6, "MM", value_type=2),  # an ASCII value
        b"Exif\0\0",
        b"Exof\0\0" + exif_segment(6, "II")[6:],
    ],
    ids=["byte-order", "magic", "ifd-offset", "zero", "nine", "ascii", "empty", "not-exif"],
)
def test_a_malformed_exif_segment_reads_as_orientation_1(tmp_path, segment):
    path = write_jpeg(tmp_path / "bad.jpg", 1, segment=segment)
    assert int(exif.read_exif_orientation(tf.constant(path.read_bytes()))) == 1
    assert exif.tiff_orientation(segment) == 1
    assert_upright(data_lib.decode_for_model(path, (HEIGHT, WIDTH), 1.0).numpy())


def test_random_corruption_never_fails_and_reads_like_the_python_parser(tmp_path):
    # Corrupted bytes in the TIFF data, and anywhere in the segments before the tables.
    rng = np.random.default_rng(7)
    for order in BYTE_ORDERS:
        contents = write_jpeg(tmp_path / f"{order}.jpg", 3, order).read_bytes()
        tiff = contents.index(exif.EXIF_HEADER) + len(exif.EXIF_HEADER)
        tables = contents.index(b"\xff\xdb")
        for trial in range(60):
            corrupt = bytearray(contents)
            low = tiff if trial % 2 else 2
            for index in rng.integers(low, tables + 4, size=int(rng.integers(1, 4))):
                corrupt[index] = int(rng.integers(0, 256))
            corrupt = bytes(corrupt)
            read = int(exif.read_exif_orientation(tf.constant(corrupt)))
            assert read == exif.jpeg_orientation(io.BytesIO(corrupt)), corrupt[:tables]
            assert 1 <= read <= 8


def test_png_gif_and_bmp_are_left_as_stored(tmp_path):
    pixels = stored(reference(), 6)
    for extension in ("png", "gif", "bmp"):
        path = tmp_path / f"image.{extension}"
        # PNG can carry EXIF too (an eXIf chunk): TensorFlow's decoder and this one ignore it.
        options = {"exif": exif_segment(6)[6:]} if extension == "png" else {}
        Image.fromarray(pixels).save(path, **options)
        assert int(exif.read_exif_orientation(tf.constant(path.read_bytes()))) == 1, extension
        image = data_lib.decode_and_resize(tf.constant(str(path)), pixels.shape[:2], "squash")
        assert_upright(image.numpy(), pixels, extension)
        assert data_lib.read_image_size(path) == pixels.shape[:2]


def test_exif_orientation_false_keeps_the_stored_pixels(oriented_files):
    path = tf.constant(str(oriented_files[(6, "II")]))
    image = data_lib.decode_and_resize(path, (WIDTH, HEIGHT), "squash", exif_orientation=False)
    assert_upright(image.numpy(), stored(reference(), 6))


JAX_SCRIPT = """
import json, sys
import keras
import numpy as np
import keras_transfer as kt

loaded = kt.image_folder_dataset(
    sys.argv[1], image_size=(48, 64), batch_size=8, crop_fraction=1.0, validation_split=0.0
)
images = np.concatenate([batch.numpy() for batch, _ in loaded.train])
np.save(sys.argv[2], images)
print(json.dumps({"backend": keras.backend.backend()}))
"""


def test_the_input_pipeline_turns_images_upright_when_keras_runs_on_jax(tmp_path):
    pytest.importorskip("jax", reason="needs jax (the jax extra)")
    for order in BYTE_ORDERS:
        (tmp_path / "images" / order).mkdir(parents=True)
        for o in ORIENTATIONS:
            write_jpeg(tmp_path / "images" / order / f"{o}.jpg", o, order)
    out = tmp_path / "images.npy"
    environment = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(tmp_path / "images"), str(out)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"backend": "jax"}
    images = np.load(out)
    assert len(images) == 16
    for i, image in enumerate(images):
        assert_upright(image, what=f"image {i}")
