"""Records that store images smaller (`kt.data.write_records(..., shorter_side=N)`): larger
images are stored upright, resized so that their shorter side is N, as JPEGs; smaller ones
as they are; and records too small for the requested load size are refused by name."""

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_transfer as kt


def _gradient(height, width):
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows * 200 / height, cols * 200 / width, 60 + 0 * rows], -1).astype("uint8")


def _stored(records, split="train"):
    """`{key: image bytes}` of a split's shards."""
    files = sorted(str(p) for p in (records / split).glob("*.tfrecord"))
    features = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "key": tf.io.FixedLenFeature([], tf.string),
    }
    stored = {}
    for serialized in tf.data.TFRecordDataset(files):
        example = tf.io.parse_single_example(serialized, features)
        stored[example["key"].numpy().decode()] = example["image"].numpy()
    return stored


@pytest.fixture
def photos(tmp_path):
    """A class folder of two large photos (one stored on its side with EXIF orientation 6)
    and one small one, and a second class of two small photos."""
    root = tmp_path / "photos"
    for name in ("left", "right"):
        (root / name).mkdir(parents=True)
    upright = _gradient(120, 200)
    # Stored rotated 90 degrees counter-clockwise; tag 6 tells viewers to turn it back.
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(root / "left" / "turned.jpg", exif=exif, quality=95)
    Image.fromarray(upright).save(root / "left" / "large.jpg", quality=95)
    Image.fromarray(_gradient(40, 48)).save(root / "left" / "small.jpg", quality=95)
    for i in range(2):
        Image.fromarray(_gradient(40, 48 + i)).save(root / "right" / f"{i}.png")
    return root, upright


def test_large_images_are_stored_upright_at_the_shorter_side_and_small_ones_unchanged(
    photos, tmp_path
):
    root, upright = photos
    manifest = kt.data.write_records(
        root, tmp_path / "records", validation_split=0.0, shorter_side=60
    )
    assert manifest["shorter_side"] == 60 and manifest["jpeg_quality"] == 95
    # The PNGs are not plain JPEGs: the reader keeps the general decoder.
    assert manifest["splits"]["train"]["plain_jpegs"] is False
    stored = _stored(tmp_path / "records")
    assert stored["left/small.jpg"] == (root / "left" / "small.jpg").read_bytes()
    assert stored["right/0.png"] == (root / "right" / "0.png").read_bytes()
    expected = tf.image.resize(upright, (60, 100), antialias=True).numpy()
    for key in ("left/large.jpg", "left/turned.jpg"):
        assert tf.io.is_jpeg(stored[key])
        image = tf.io.decode_jpeg(stored[key]).numpy()
        assert image.shape == (60, 100, 3), key  # upright: the tag is applied, not kept
        assert np.abs(image.astype(float) - expected).mean() < 3, key


def test_records_stored_smaller_train_like_the_folder(photos, tmp_path):
    root, _ = photos
    kt.data.write_records(root, tmp_path / "records", validation_split=0.0, shorter_side=64)
    options = dict(batch_size=5, shuffle=False, crop_fraction=1.0)
    from_records = kt.data.records_dataset(tmp_path / "records", 48, **options)
    from_folder = kt.image_folder_dataset(root, 48, validation_split=0.0, **options)
    records_images = np.concatenate([x for x, _ in from_records.train])
    folder_images = np.concatenate([x for x, _ in from_folder.train])
    assert records_images.shape == folder_images.shape == (5, 48, 48, 3)
    # Same images (the order of records is seeded): each one's closest folder image.
    for image in records_images:
        closest = min(np.abs(image - other).mean() for other in folder_images)
        assert closest < 3


def test_a_load_size_above_the_stored_side_is_refused(photos, tmp_path):
    root, _ = photos
    kt.data.write_records(root, tmp_path / "records", validation_split=0.0, shorter_side=64)
    kt.data.records_dataset(tmp_path / "records", 56)  # loads at 64: allowed
    with pytest.raises(ValueError, match=r"shorter side at 64 px.*shorter_side=73"):
        kt.data.records_dataset(tmp_path / "records", 64)  # 64 / 0.875 = 73


@pytest.mark.parametrize(
    "options",
    [
        {"shorter_side": 0},
        {"shorter_side": True},
        {"shorter_side": 2.5},
        {"shorter_side": 64, "jpeg_quality": 101},
    ],  # fmt: skip
)
def test_bad_shorter_side_or_quality_is_refused_before_writing(photos, tmp_path, options):
    root, _ = photos
    with pytest.raises(ValueError, match="shorter_side|jpeg_quality"):
        kt.data.write_records(root, tmp_path / "records", **options)
    assert not (tmp_path / "records").exists()


def test_records_of_jpegs_stored_upright_are_marked_plain(photos, tmp_path):
    root, _ = photos
    left = root / "left"
    pairs = [(str(left / "large.jpg"), "a"), (str(left / "turned.jpg"), "a"),
             (str(left / "small.jpg"), "b")]  # fmt: skip
    options = dict(validation_split=0.0)
    # Stored smaller, the turned photo is upright without its tag: every image is plain.
    smaller = kt.data.write_records(pairs, tmp_path / "smaller", shorter_side=60, **options)
    assert smaller["splits"]["train"]["plain_jpegs"] is True
    as_is = kt.data.write_records(pairs, tmp_path / "as_is", **options)
    assert as_is["splits"]["train"]["plain_jpegs"] is False  # the turned one, as stored


# --- raw_pixels: records of decoded pixels ----------------------------------------------------


def _pixels(records, split="train"):
    """`{key: (height, width, 3) uint8 array}` of a split's shards written with raw_pixels."""
    files = sorted(str(p) for p in (records / split).glob("*.tfrecord"))
    features = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "key": tf.io.FixedLenFeature([], tf.string),
        "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64),
    }
    stored = {}
    for serialized in tf.data.TFRecordDataset(files):
        example = tf.io.parse_single_example(serialized, features)
        sides = (int(example["height"]), int(example["width"]), 3)
        pixels = np.frombuffer(example["image"].numpy(), np.uint8).reshape(sides)
        stored[example["key"].numpy().decode()] = pixels
    return stored


def _antialiased(image, size):
    resized = tf.image.resize(tf.convert_to_tensor(image), size, antialias=True)
    return np.asarray(tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8))


def test_raw_pixels_store_each_image_upright_and_resized_as_decoded_pixels(photos, tmp_path):
    root, _ = photos
    manifest = kt.data.write_records(
        root, tmp_path / "records", validation_split=0.0, shorter_side=60, raw_pixels=True
    )
    assert manifest["raw_pixels"] is True and manifest["version"] == 2
    assert manifest["splits"]["train"]["plain_jpegs"] is False  # nothing to decode as JPEG
    stored = _pixels(tmp_path / "records")
    left = root / "left"
    large = tf.io.decode_jpeg((left / "large.jpg").read_bytes(), channels=3)
    # The turned photo: decoded, turned as its tag 6 says (a quarter turn clockwise), resized.
    turned = np.rot90(tf.io.decode_jpeg((left / "turned.jpg").read_bytes(), channels=3), k=-1)
    np.testing.assert_array_equal(stored["left/large.jpg"], _antialiased(large, (60, 100)))
    np.testing.assert_array_equal(stored["left/turned.jpg"], _antialiased(turned, (60, 100)))
    # Images no larger than shorter_side keep their size: the decoded file.
    small = tf.io.decode_jpeg((left / "small.jpg").read_bytes(), channels=3)
    np.testing.assert_array_equal(stored["left/small.jpg"], small)
    assert stored["right/1.png"].shape == (40, 49, 3)


@pytest.mark.parametrize("central_crop", [True, False])
def test_stored_pixels_crop_as_the_decoder_crops_a_png_of_them(central_crop):
    pixels = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    options = kt.data.pipeline_options(32, 4, cache=False)
    png = tf.io.encode_png(pixels)
    want = options.decode_bytes(png, central_crop=central_crop)
    got = options.decode_pixels(tf.constant(pixels), central_crop=central_crop)
    assert got.shape == want.shape == ((32, 32, 3) if central_crop else (37, 37, 3))
    np.testing.assert_array_equal(got, want)


def test_raw_pixel_records_give_the_folder_loaders_batches(tmp_path):
    root = tmp_path / "pngs"
    rng = np.random.default_rng(1)
    for name, count in (("ants", 7), ("bees", 6)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    split = dict(validation_split=0.3, test_split=0.2, seed=4)
    kt.data.write_records(root, tmp_path / "records", shard_size=3, shorter_side=48,
                          raw_pixels=True, **split)  # fmt: skip
    options = dict(image_size=32, batch_size=4)
    records = kt.data.records_dataset(tmp_path / "records", seed=4, **options)
    images = kt.image_folder_dataset(root, **split, **options)
    assert records.num_test == images.num_test >= 2
    for name in ("validation", "test"):
        got = [np.asarray(x) for batch in getattr(records, name) for x in batch[0]]
        want = [np.asarray(x) for batch in getattr(images, name) for x in batch[0]]
        np.testing.assert_array_equal(np.stack(got), np.stack(want))


def test_raw_pixels_without_a_shorter_side_are_refused_with_the_fix(photos, tmp_path):
    root, _ = photos
    with pytest.raises(ValueError, match=r"raw_pixels=True.*shorter_side=256"):
        kt.data.write_records(root, tmp_path / "records", raw_pixels=True)
    assert not (tmp_path / "records").exists()


def test_version_1_records_folders_still_read(photos, tmp_path):
    root, _ = photos
    kt.data.write_records(root, tmp_path / "records", validation_split=0.0)
    path = tmp_path / "records" / kt.data.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["version"] = 1
    manifest.pop("raw_pixels")
    path.write_text(json.dumps(manifest))
    data = kt.data.records_dataset(tmp_path / "records", image_size=32, batch_size=8)
    assert sum(int(y.shape[0]) for _, y in data.train) == 5


def test_the_default_shuffle_buffer_holds_a_fixed_number_of_bytes_of_records(
    photos, tmp_path, monkeypatch
):
    root, _ = photos
    split = dict(validation_split=0.0)
    raw = kt.data.write_records(root, tmp_path / "raw", shorter_side=60, raw_pixels=True, **split)
    files = kt.data.write_records(root, tmp_path / "files", **split)
    monkeypatch.setattr(kt.data.records, "SHUFFLE_BUFFER_BYTES", 2**22)
    buffers = {}
    for name, manifest in (("raw", raw), ("files", files)):
        shards = (tmp_path / name / "train").glob("*.tfrecord")
        mean_bytes = sum(path.stat().st_size for path in shards) / 5
        buffers[name] = kt.data.records.default_shuffle_buffer(tmp_path / name, manifest)
        assert buffers[name] == min(10_000, max(100, int(2**22 // mean_bytes)))
    # Pixels take more bytes per record, so fewer of them fill the buffer.
    assert 100 < buffers["raw"] < buffers["files"]
    with pytest.raises(ValueError, match="shuffle_buffer must be a positive integer"):
        kt.data.records_dataset(tmp_path / "raw", image_size=32, shuffle_buffer=0)
