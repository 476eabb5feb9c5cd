"""`data.decode_central_crop`: the decoder of every centrally cropped image (validation, test,
training without the random crop, `predict`, TFRecord shards) decodes only the crop's window
of a JPEG and resizes it straight to the model's size, showing what the two-step path
(`decode_image_bytes` to the load size, then `central_crop`) shows."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_transfer import data


def _photo(height=300, width=400):
    # Smooth, so that a half-pixel move of the samples changes a pixel by a level or two.
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows * 0.8, cols * 0.6, (rows + cols) * 0.35], -1).astype("uint8")


def _two_step(contents, size, crop_fraction, resize):
    load = data.load_size(size, crop_fraction)
    return data.central_crop(data.decode_image_bytes(contents, load, resize), size)


@pytest.mark.parametrize(
    "size, crop_fraction, resize",
    [((224, 224), 0.875, "crop"), ((64, 96), 0.875, "squash"), ((96, 96), 1.0, "crop")],
)
@pytest.mark.parametrize("encode", [tf.io.encode_jpeg, tf.io.encode_png])
def test_it_shows_what_the_two_step_path_shows(size, crop_fraction, resize, encode):
    contents = encode(_photo())
    image = data.decode_central_crop(contents, size, crop_fraction, resize)
    assert image.shape == (*size, 3) and image.dtype == tf.uint8
    expected = _two_step(contents, size, crop_fraction, resize)
    difference = np.abs(image.numpy().astype(int) - expected.numpy().astype(int))
    assert difference.mean() < 1.0 and difference.max() <= 3


def test_a_jpeg_decodes_only_its_window_at_the_largest_ratio_that_keeps_the_size(monkeypatch):
    contents = tf.io.encode_jpeg(_photo(), quality=95)
    calls, full = [], []
    decode_and_crop = tf.io.decode_and_crop_jpeg

    def recording(contents, window, **kwargs):
        calls.append((kwargs.get("ratio", 1), [int(v) for v in window]))
        return decode_and_crop(contents, window, **kwargs)

    monkeypatch.setattr(tf.io, "decode_and_crop_jpeg", recording)
    monkeypatch.setattr(tf.io, "decode_jpeg", lambda *a, **k: full.append(1))
    # Load sizes 114, 46 and 229 (crop_fraction 0.875): 300 // 114 = 2 -> ratio 2;
    # min(300 // 46, 400 // 46) = 6 -> 4; 300 // 229 = 1 -> 1.
    for size, ratio in (((100, 100), 2), ((40, 40), 4), ((200, 200), 1)):
        calls.clear()
        data.decode_central_crop(contents, size)
        [(used, window)] = calls
        assert used == ratio, size
        # The window is the crop's part of the stored pixels at that ratio: a 3:4 photo is
        # covered on its short side, so the crop spans size / load of the height, centred.
        scaled_height = -(-300 // ratio)
        load = data.load_size(size, 0.875)[0]
        assert window[2] == round(size[0] * scaled_height / load), (size, window)
        assert window[0] == pytest.approx((scaled_height - window[2]) / 2, abs=1)
    assert full == []  # never a full-size decode


def test_images_smaller_or_thinner_than_the_crop_still_decode():
    for shape in ((5, 7), (4, 400), (400, 4)):
        for encode in (tf.io.encode_jpeg, tf.io.encode_png):
            image = data.decode_central_crop(encode(_photo(*shape)), (32, 32))
            assert image.shape == (32, 32, 3), shape


def test_loaders_validation_predict_and_records_read_the_same_pixels(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            photo = _photo(120 + 20 * i, 160)
            photo = np.clip(photo + rng.integers(0, 40, photo.shape), 0, 255).astype("uint8")
            (root / label / f"{i}.jpg").write_bytes(tf.io.encode_jpeg(photo).numpy())
    loaded = data.image_folder_dataset(
        root, image_size=48, batch_size=6, validation_split=0.0, shuffle=False
    )
    from_loader = np.concatenate([images.numpy() for images, _ in loaded.train])
    paths = sorted(root.glob("*/*.jpg"))
    direct = np.stack([data.decode_for_model(path, 48) for path in paths])
    np.testing.assert_array_equal(from_loader, direct)
    records = tmp_path / "records"
    data.write_records(root, records, validation_split=0.0)
    stored = data.records_dataset(records, image_size=48, batch_size=6, shuffle=False)
    from_records = np.concatenate([images.numpy() for images, _ in stored.train]).astype("uint8")
    # The training split is written in a seeded random order: compared as a set.
    assert sorted(i.tobytes() for i in from_records) == sorted(i.tobytes() for i in direct)


def _write(path, pixels, orientation=None):
    image = Image.fromarray(pixels)
    if orientation is None:
        image.save(path, quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, quality=95, exif=exif)
    return str(path)


def test_plain_jpegs_are_local_jpegs_stored_upright(tmp_path):
    small = _write(tmp_path / "small.jpg", _photo(120, 160))
    large = _write(tmp_path / "large.jpg", _photo(300, 400))
    turned = _write(tmp_path / "turned.jpg", _photo(120, 160), orientation=6)
    png = tmp_path / "small.png"
    png.write_bytes(tf.io.encode_png(_photo(120, 160)).numpy())
    assert data.plain_jpeg_size(small) == (120, 160)
    assert data.plain_jpeg_size(turned) is None and data.plain_jpeg_size(png) is None
    assert data.plain_jpegs([small, large])
    assert not data.plain_jpegs([small, turned])
    assert not data.plain_jpegs([small, str(png)])
    assert not data.plain_jpegs(["ram://photos/small.jpg"])  # remote: unread
    assert not data.plain_jpegs([])


@pytest.mark.parametrize("central", [True, False])
def test_the_plain_decoder_gives_the_general_decoders_pixels(tmp_path, central):
    contents = tf.io.encode_jpeg(_photo(300, 400), quality=90)
    # Decoded at ratio 4, 2 and 1 (the ratio switch stays in the plain decoder).
    cases = [((32, 32), 0.875, "crop"), ((64, 96), 1.0, "squash"), ((200, 200), 0.875, "crop")]
    for size, crop_fraction, resize in cases:
        load = data.load_size(size, crop_fraction)
        if central:
            args = (contents, size, crop_fraction, resize)
            general = data.decode_central_crop(*args)
            plain = data.decode_central_crop(*args, plain_jpeg=True)
        else:
            general = data.decode_image_bytes(contents, load, resize)
            plain = data.decode_image_bytes(contents, load, resize, plain_jpeg=True)
        np.testing.assert_array_equal(plain.numpy(), general.numpy())


def test_a_folder_of_plain_jpegs_decodes_as_predict_does_and_a_turned_one_upright(tmp_path):
    # The loader takes the plain decoder for a folder of plain JPEGs and the general one
    # once a single file has an EXIF turn; predict (always general) reads both the same.
    for name, turned in (("plain", False), ("mixed", True)):
        root = tmp_path / name
        for label in ("a", "b"):
            (root / label).mkdir(parents=True)
            for i in range(2):
                _write(root / label / f"{i}.jpg", _photo(100 + 10 * i, 140))
        if turned:
            upright = _photo(100, 140)
            stored = np.ascontiguousarray(np.rot90(upright, 1))  # 90 degrees counter-clockwise
            _write(root / "a" / "0.jpg", stored, orientation=6)
        paths = tuple(str(p) for p in sorted(root.glob("*/*.jpg")))
        assert data.plain_jpegs(paths) is not turned
        loaded = data.image_folder_dataset(
            root, image_size=64, batch_size=4, validation_split=0.0, shuffle=False
        )
        images = np.concatenate([x.numpy() for x, _ in loaded.train])
        direct = np.stack([data.decode_for_model(path, 64) for path in paths])
        np.testing.assert_array_equal(images, direct)
        assert images.shape == (4, 64, 64, 3)
        if turned:  # shown upright: like the same photo stored upright
            reference = data.decode_central_crop(tf.io.encode_jpeg(upright, quality=95), (64, 64))
            assert np.abs(images[0].astype(int) - reference.numpy().astype(int)).mean() < 3


def test_a_file_turned_after_a_first_check_is_seen_by_the_next(tmp_path):
    path = _write(tmp_path / "photo.jpg", _photo(120, 160))
    assert data.plain_jpegs([path])
    _write(tmp_path / "photo.jpg", _photo(120, 160), orientation=6)
    assert not data.plain_jpegs([path])


def test_float32_output_holds_the_uint8_values_and_uncached_loaders_use_it(tmp_path):
    contents = tf.io.encode_jpeg(_photo(120, 160))
    as_uint8 = data.decode_central_crop(contents, (48, 48))
    as_float = data.decode_central_crop(contents, (48, 48), dtype="float32")
    assert as_float.dtype == tf.float32
    np.testing.assert_array_equal(as_float.numpy(), as_uint8.numpy().astype("float32"))
    with pytest.raises(ValueError, match="dtype"):
        data.decode_central_crop(contents, (48, 48), dtype="float16")
    root = tmp_path / "images"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            _write(root / label / f"{i}.jpg", _photo(100 + 10 * i, 140))
    options = dict(image_size=48, batch_size=4, validation_split=0.0, shuffle=False)
    cached = data.image_folder_dataset(root, cache=True, **options).train
    uncached = data.image_folder_dataset(root, cache=False, **options).train
    assert cached.element_spec[0].dtype == uncached.element_spec[0].dtype == tf.float32
    np.testing.assert_array_equal(next(iter(cached))[0], next(iter(uncached))[0])
