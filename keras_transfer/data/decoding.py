"""Image files: which are read, decoding and resizing, and size limits read from headers.

Every loader decodes with `decode_and_resize` (float32 batches are made later, by
`pipeline`), which also turns a JPEG upright by its EXIF orientation (`exif`), and checks
sizes before decoding anything: `read_image_size` reads a file's header only, so an image
above `max_pixels` (a decompression bomb) costs nothing. TFRecord shards (`records`) hold the
files' bytes, checked the same way when they were written, and decode them with
`decode_image_bytes`, the decoder `decode_and_resize` calls.

Images that are cropped centrally (validation, test, training without the random `crop`
augmentation) decode with `decode_central_crop`, straight to the crop; images cropped at
random later decode with `decode_and_resize` to `load_size`. `decode_for_model` is what a
model sees of one file outside the training loop (`predict`, export checks, notebooks): the
same `decode_central_crop` as the loaders' validation images, so a prediction reproduces
validation.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Sequence
from typing import Any
from typing import BinaryIO

import numpy as np
import tensorflow as tf

from keras_transfer.data import exif
from keras_transfer.utils import files

__all__ = [
    "DEFAULT_CROP_FRACTION",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "UNSUPPORTED_IMAGE_FORMATS",
    "as_image_size",
    "check_batch_size",
    "check_image_size",
    "check_max_pixels",
    "central_crop",
    "central_crop_pixels",
    "decode_and_resize",
    "decode_central_crop",
    "decode_for_model",
    "decode_image_bytes",
    "find_undecodable",
    "load_size",
    "plain_jpeg_size",
    "plain_jpegs",
    "read_image_size",
    "resize_and_crop",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# Image formats TensorFlow's decoder does not read: reported by name instead of ignored.
UNSUPPORTED_IMAGE_FORMATS = {
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".avif": "AVIF",
    ".jp2": "JPEG 2000",
    ".psd": "Photoshop",
    ".ico": "ICO",
    ".svg": "SVG",
}
DEFAULT_MAX_PIXELS = 50_000_000
# Validation images are scaled to cover image_size / 0.875 and centrally cropped (ImageNet's
# evaluation), unless a loader is given another crop_fraction.
DEFAULT_CROP_FRACTION = 0.875


def resize_and_crop(image: tf.Tensor, size: tuple[int, int], resize: str = "crop") -> tf.Tensor:
    """Resizes one image to `size` as uint8.

    `resize="crop"` keeps the aspect ratio: it scales the image to cover `size` and takes
    the central part, as ImageNet evaluation does. `resize="squash"` stretches the whole
    image to `size` (what `keras.utils.image_dataset_from_directory` does by default).
    """
    if resize == "crop":
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = tf.reduce_max(tf.constant(size, tf.float32) / shape)
        scaled = tf.cast(tf.math.ceil(shape * scale), tf.int32)
        image = tf.image.resize(image, scaled)
        top = (scaled[0] - size[0]) // 2
        left = (scaled[1] - size[1]) // 2
        image = image[top : top + size[0], left : left + size[1]]
    elif resize == "squash":
        image = tf.image.resize(image, size)
    else:
        raise ValueError(f"resize must be 'crop' or 'squash', got {resize!r}.")
    return _rounded(image, size)


def decode_and_resize(
    path: tf.Tensor,
    size: tuple[int, int],
    resize: str = "crop",
    scaled_jpeg: bool = True,
    exif_orientation: bool = True,
) -> tf.Tensor:
    """Reads, decodes, turns upright and resizes one image file to `size` (see
    `resize_and_crop`): the one decode path of the loaders, the feature cache, `predict` and
    the export checks.

    With `exif_orientation`, a JPEG is turned as its EXIF orientation tag says, as image
    viewers show it (`exif.read_exif_orientation`, TensorFlow ops inside the `tf.data` map):
    a phone photo stored on its side trains and predicts upright. `False` keeps the pixels
    as stored, the behaviour before the tag was read (for comparisons only: a model's
    training and its predictions should read files the same way).

    With `scaled_jpeg`, a JPEG at least twice `size` on both sides is decoded at 1/2, 1/4 or
    1/8 of its size (`tf.io.decode_jpeg(ratio=...)`, the largest ratio that keeps it at least
    `size`): libjpeg then skips most of the inverse DCT work, and the smaller image resizes
    with less aliasing. The sides are compared as stored, before the turn (after a quarter
    turn, the stored height becomes the width). Measured (benchmarks/throughput.py,
    `large_jpeg_decode`): ants-vs-bees photos (median 500x375) at 128 px, 377 of 397 decoded
    at ratio 2: 1.32x the images/s (noisy, loaded machine) and a linear-probe validation
    accuracy of 0.889 vs 0.895 (one image of 153). Other formats, and JPEGs smaller than
    twice `size`, are decoded in full.
    """
    return decode_image_bytes(
        tf.io.read_file(path), size, resize, scaled_jpeg, exif_orientation=exif_orientation
    )


def decode_image_bytes(
    contents: tf.Tensor,
    size: tuple[int, int],
    resize: str = "crop",
    scaled_jpeg: bool = True,
    exif_orientation: bool = True,
    plain_jpeg: bool = False,
) -> tf.Tensor:
    """Decodes, turns upright and resizes the encoded bytes of one image file
    (`decode_and_resize` after the file is read): the one decoder of image folders and of
    TFRecord shards (`data.records`), so an image stored in a shard gives the same pixels
    as its file. `plain_jpeg=True` is for bytes known to be a plain JPEG (`plain_jpegs`):
    the same pixels, without the EXIF parse and the branch on the format."""
    if plain_jpeg:
        if scaled_jpeg:
            return resize_and_crop(_decode_scaled_jpeg(contents, size), size, resize)
        return resize_and_crop(tf.io.decode_jpeg(contents, channels=3), size, resize)
    orientation = exif.read_exif_orientation(contents) if exif_orientation else None
    if scaled_jpeg:
        # Ratio scaling happens before the turn: the stored sides are compared with `size`
        # as stored.
        stored = size if orientation is None else tf.where(orientation >= 5, size[::-1], size)
        image = tf.cond(
            tf.io.is_jpeg(contents),
            lambda: _decode_scaled_jpeg(contents, stored),
            lambda: _decode_full(contents),
        )
    else:
        image = _decode_full(contents)
    if orientation is not None:
        image = exif.apply_exif_orientation(image, orientation)
    return resize_and_crop(image, size, resize)


def _decode_scaled_jpeg(contents: tf.Tensor, size: tf.Tensor | tuple[int, int]) -> tf.Tensor:
    shape = tf.image.extract_jpeg_shape(contents)
    # The largest ratio that keeps both sides at least `size`: 0 -> 1, 1 -> 2, 2 -> 4, 3 -> 8.
    fits = tf.minimum(shape[0] // size[0], shape[1] // size[1])
    branch = tf.reduce_sum(tf.cast(fits >= tf.constant([2, 4, 8]), tf.int32))
    return tf.switch_case(
        branch,
        [
            lambda ratio=ratio: tf.io.decode_jpeg(contents, channels=3, ratio=ratio)
            for ratio in (1, 2, 4, 8)
        ],
    )


def central_crop(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """The central `size` (height, width) part of one `(height, width, channels)` image:
    the loaders' validation crop. An odd margin leaves its extra pixel at the bottom/right."""
    shape = tf.shape(image)
    height = image.shape[0] if image.shape[0] is not None else shape[0]
    width = image.shape[1] if image.shape[1] is not None else shape[1]
    top = (height - size[0]) // 2
    left = (width - size[1]) // 2
    return image[top : top + size[0], left : left + size[1]]


def decode_for_model(
    path: str | os.PathLike | tf.Tensor,
    image_size: int | Sequence[int],
    crop_fraction: float = DEFAULT_CROP_FRACTION,
    resize: str = "crop",
) -> tf.Tensor:
    """One image file as a model sees it in validation: a `(height, width, 3)` uint8 tensor.

    The decoder of the loaders' validation and test images (`decoded_dataset` with
    `central_crop=True`): `decode_central_crop` of the file's bytes, JPEG ratio decoding and
    EXIF orientation included. Decoding a file any other way (in full, or with PIL) gives a
    few levels of difference per pixel, enough to flip predictions near the decision
    boundary.

    ```python
    image = decode_for_model("bee.jpg", model.input_shape[1:3])
    probabilities = model.predict(tf.cast(image, "float32")[None])
    ```

    Raises:
        tf.errors.InvalidArgumentError: the file is not an image TensorFlow decodes.
    """
    image_size = as_image_size(image_size)
    if not isinstance(path, tf.Tensor):
        path = tf.constant(os.fspath(path))
    return decode_central_crop(tf.io.read_file(path), image_size, crop_fraction, resize)


def decode_central_crop(
    contents: tf.Tensor,
    image_size: tuple[int, int],
    crop_fraction: float = DEFAULT_CROP_FRACTION,
    resize: str = "crop",
    exif_orientation: bool = True,
    plain_jpeg: bool = False,
    dtype: str = "uint8",
) -> tf.Tensor:
    """The central `image_size` crop of one encoded image, as uint8: what
    `central_crop(decode_image_bytes(contents, load_size(image_size, crop_fraction), resize),
    image_size)` shows, computed without the full-size steps.

    The crop's window is found in the stored pixels (its sides `image_size` divided by the
    scale that `resize_and_crop` would apply), decoded alone (a JPEG with
    `tf.io.decode_and_crop_jpeg`, at the ratio `decode_image_bytes` would use; other formats
    in full, then sliced), resized straight to `image_size`, turned upright by its EXIF
    orientation and rounded to uint8: the whole image is never resized nor rounded
    (benchmarks/input_stages.py times both decoders). The pixels differ from the two-step
    path by where bilinear resizing samples: the window's sides and corner are whole stored
    pixels, so the samples move by up to half a stored pixel (`central_crop` of the two-step
    path is no longer what the loaders give; this is). ResizeBilinear on the window is the
    fast op; the exact samples (`crop_and_resize` or `ScaleAndTranslate`) cost more than the
    full resize saved.
    The loaders' validation, test and centrally cropped training images, `predict`, the
    export check and TFRecord shards all decode with it.

    `plain_jpeg=True` is for bytes known to be a plain JPEG, stored upright (`plain_jpegs`
    checked the files' headers): the same pixels, built without the EXIF parse and the
    branch on the format, whose ops cost CPU time even when not taken
    (benchmarks/input_stages.py: its `central` and `central_plain_jpeg` stages).

    `dtype="float32"` gives the same values (rounded to whole levels) as float32, for a
    pipeline that caches nothing: it skips the conversion to uint8 and back.
    """
    load = load_size(image_size, crop_fraction)
    if plain_jpeg:
        target = tf.constant(image_size)
        window = _jpeg_window(contents, target, tf.constant(load), resize)
        return _rounded(tf.image.resize(window, target), image_size, dtype)
    orientation = exif.read_exif_orientation(contents) if exif_orientation else None
    # The window is found and resized in the stored pixels: sides swapped for quarter turns.
    target, stored_load = tf.constant(image_size), tf.constant(load)
    if orientation is not None:
        swap = orientation >= 5
        target = tf.where(swap, target[::-1], target)
        stored_load = tf.where(swap, stored_load[::-1], stored_load)
    window = tf.cond(
        tf.io.is_jpeg(contents),
        lambda: _jpeg_window(contents, target, stored_load, resize),
        lambda: _slice_window(_decode_full(contents), target, stored_load, resize),
    )
    image = tf.image.resize(window, target)
    if orientation is not None:
        image = exif.apply_exif_orientation(image, orientation)
    return _rounded(image, image_size, dtype)


def central_crop_pixels(
    image: tf.Tensor,
    image_size: tuple[int, int],
    crop_fraction: float = DEFAULT_CROP_FRACTION,
    resize: str = "crop",
    dtype: str = "uint8",
) -> tf.Tensor:
    """`decode_central_crop` of an image decoded already (`(height, width, 3)` uint8, upright):
    its window sliced, resized straight to `image_size` and rounded, as `decode_central_crop`
    does with a PNG of the same pixels (the decoder of records that store pixels,
    `write_records(raw_pixels=True)`)."""
    target = tf.constant(image_size)
    window = _slice_window(image, target, tf.constant(load_size(image_size, crop_fraction)), resize)
    return _rounded(tf.image.resize(window, target), image_size, dtype)


def _window(shape: tf.Tensor, target: tf.Tensor, load: tf.Tensor, resize: str) -> tf.Tensor:
    """`[top, left, height, width]`: the stored pixels (`shape`, height and width) that the
    central `target` crop of the image resized to `load` by `resize_and_crop` shows, to the
    nearest pixel."""
    sides = tf.cast(shape, tf.float32)
    if resize == "crop":
        scale = tf.reduce_max(tf.cast(load, tf.float32) / sides)
        resized = tf.cast(tf.math.ceil(sides * scale), tf.int32)
    elif resize == "squash":
        resized = load
    else:
        raise ValueError(f"resize must be 'crop' or 'squash', got {resize!r}.")
    # Stored pixels per resized pixel, side by side (what tf.image.resize steps by).
    step = sides / tf.cast(resized, tf.float32)
    window = tf.cast(tf.round(tf.cast(target, tf.float32) * step), tf.int32)
    window = tf.clip_by_value(window, 1, shape)
    top = tf.cast(tf.round(tf.cast((resized - target) // 2, tf.float32) * step), tf.int32)
    return tf.concat([tf.clip_by_value(top, 0, shape - window), window], 0)


def _slice_window(image: tf.Tensor, target: tf.Tensor, load: tf.Tensor, resize: str):
    box = _window(tf.shape(image)[:2], target, load, resize)
    return image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]]


def _jpeg_window(contents: tf.Tensor, target: tf.Tensor, load: tf.Tensor, resize: str):
    shape = tf.image.extract_jpeg_shape(contents)[:2]
    # The ratio `_decode_scaled_jpeg` would choose (the largest keeping `load`); libjpeg
    # then decodes only the window's rows and columns, at that scale (whose sides are the
    # stored ones over the ratio, rounded up).
    fits = tf.minimum(shape[0] // load[0], shape[1] // load[1])
    branch = tf.reduce_sum(tf.cast(fits >= tf.constant([2, 4, 8]), tf.int32))
    ratio = tf.bitwise.left_shift(1, branch)
    window = _window((shape + ratio - 1) // ratio, target, load, resize)
    # One op a branch: the ops of the branches not taken still cost their scheduling.
    return tf.switch_case(
        branch,
        [
            lambda r=r: tf.io.decode_and_crop_jpeg(contents, window, channels=3, ratio=r)
            for r in (1, 2, 4, 8)
        ],
    )


def _rounded(image: tf.Tensor, size: tuple[int, int], dtype: str = "uint8") -> tf.Tensor:
    """Whole levels in [0, 255], as uint8 (an in-memory cache 4x smaller than float32) or
    float32 (the same values)."""
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"dtype must be 'uint8' or 'float32', got {dtype!r}.")
    image = tf.clip_by_value(tf.round(image), 0, 255)
    if dtype == "uint8":
        image = tf.cast(image, tf.uint8)
    return tf.ensure_shape(image, (*size, 3))


def _decode_full(contents: tf.Tensor) -> tf.Tensor:
    # decode_image handles JPEG, PNG, GIF (first frame) and BMP; channels=3 turns
    # grayscale into RGB and drops alpha, so every image arrives as RGB.
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape((None, None, 3))
    return image


def load_size(image_size: tuple[int, int], crop_fraction: float) -> tuple[int, int]:
    """The size images are cached at so that a central (or random) crop of `image_size`
    covers `crop_fraction` of each side."""
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}.")
    return tuple(int(round(side / crop_fraction)) for side in image_size)


def find_undecodable(paths: Sequence[str]) -> list[str]:
    """Paths TensorFlow cannot read as images (empty, truncated, not an image, unreadable).

    Every file is decoded once with the same decoder as training, in parallel, so that a
    bad file is found before training instead of crashing it mid-epoch.
    """
    if not paths:
        return []
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths)), list(paths)))
    dataset = dataset.map(
        # Reduce over the pixels: a statically known output (like the shape) would let
        # tf.data prune the decode and miss the errors.
        lambda index, path: (
            index,
            # Full decode: every part of the file is read, whatever its size (upright or
            # not: only whether it decodes matters).
            tf.reduce_max(
                decode_and_resize(path, (8, 8), "squash", scaled_jpeg=False, exif_orientation=False)
            ),
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).ignore_errors()
    decoded = {int(index) for index, _ in dataset.as_numpy_iterator()}
    return [path for i, path in enumerate(paths) if i not in decoded]


def as_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """`image_size` (one int or `(height, width)`) as a checked `(height, width)` pair."""
    check_image_size(image_size)
    if isinstance(image_size, int):
        return (image_size, image_size)
    height, width = image_size
    return (int(height), int(width))


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_image_size(image_size: Any, name: str = "image_size") -> None:
    """Raises a `ValueError` naming `name` unless `image_size` is a positive int or a
    `(height, width)` pair of positive ints."""
    sizes = [image_size] if _is_int(image_size) else image_size
    if isinstance(image_size, str | bytes) or not (
        _is_int(image_size)
        or (isinstance(sizes, Sequence) and len(sizes) == 2 and all(_is_int(s) for s in sizes))
    ):
        raise ValueError(
            f"{name} must be an int or a (height, width) pair of ints, got {image_size!r}."
        )
    if any(s < 1 for s in sizes):
        raise ValueError(f"{name} must be positive, got {image_size!r}.")


def check_batch_size(batch_size: Any, name: str = "batch_size") -> None:
    """Raises a `ValueError` naming `name` unless `batch_size` is a positive integer."""
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"{name} must be a positive integer, got {batch_size!r}.")


def check_max_pixels(max_pixels: Any) -> None:
    """Raises a `ValueError` unless `max_pixels` is a positive integer or `None`."""
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1
    ):
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}.")


# ---------------------------------------------------------------------------------------
# Image sizes from file headers
# ---------------------------------------------------------------------------------------

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4 (DHT),
# C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def read_image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """`(height, width)` of a JPEG, PNG, GIF, BMP or WebP file, read from its header: the
    size it decodes to, so a JPEG whose EXIF orientation turns it a quarter (5 to 8) has its
    stored sides swapped, as `decode_and_resize` turns it.

    Only the first bytes are read (a JPEG's markers up to its frame header, and its EXIF
    segment), never the pixels, so this is cheap on any file, including one that would
    decode to gigabytes. The format is taken from the content, not the file name. `None`
    when the file cannot be read or is not one of these formats.
    """
    try:
        with files.open_file(path, "rb") as f:
            head = f.read(32)
            if head.startswith(b"\xff\xd8"):
                return _jpeg_size(f)
            return _header_size(head)
    except OSError:
        return None


def _header_size(head: bytes) -> tuple[int, int] | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return height, width
    if head[:6] in (b"GIF87a", b"GIF89a"):
        # The logical screen: TensorFlow decodes every frame onto a canvas of this size.
        width, height = struct.unpack("<HH", head[6:10])
        return height, width
    if head.startswith(b"BM") and len(head) >= 26:
        if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
            width, height = struct.unpack("<HH", head[18:22])
        else:
            width, height = struct.unpack("<ii", head[18:26])
        return abs(height), abs(width)  # a negative height means top-down rows
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
            width, height = struct.unpack("<HH", head[26:30])
            return height & 0x3FFF, width & 0x3FFF
        if chunk == b"VP8L" and head[20] == 0x2F:
            bits = int.from_bytes(head[21:25], "little")
            return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
        if chunk == b"VP8X":
            width = int.from_bytes(head[24:27], "little") + 1
            height = int.from_bytes(head[27:30], "little") + 1
            return height, width
    return None


def _jpeg_size(f) -> tuple[int, int] | None:
    size = _jpeg_frame_size(f)
    # The size the image decodes to: a quarter turn by EXIF swaps the sides.
    if size is not None and exif.swaps_sides(exif.jpeg_orientation(f)):
        return size[1], size[0]
    return size


def plain_jpeg_size(file: str | os.PathLike | BinaryIO) -> tuple[int, int] | None:
    """The `(height, width)` of a plain JPEG, from its header: a JPEG stored upright (no
    EXIF orientation but 1). `None` for any other file, or one that cannot be read. `file`
    is a path or a binary file object (the bytes of a record)."""
    if not isinstance(file, str | os.PathLike):
        return _plain_jpeg_size(file)
    try:
        with files.open_file(file, "rb") as f:
            return _plain_jpeg_size(f)
    except OSError:
        return None


def _plain_jpeg_size(f: BinaryIO) -> tuple[int, int] | None:
    f.seek(0)
    if f.read(2) != b"\xff\xd8":
        return None
    size = _jpeg_frame_size(f)
    return size if size is not None and exif.jpeg_orientation(f) == 1 else None


def plain_jpegs(paths: Sequence[str]) -> bool:
    """Whether every file of `paths` is a local plain JPEG (`plain_jpeg_size`): then the
    decoders may take `plain_jpeg=True`, which builds neither the EXIF parse nor the branch
    on the format. The headers are read again only when a file's size or modification time
    changed; remote paths answer `False` unread."""
    paths = tuple(os.fspath(path) for path in paths)
    if not paths or any(files.is_remote(path) for path in paths):
        return False
    try:
        stamps = tuple((stat.st_size, stat.st_mtime_ns) for stat in map(os.stat, paths))
    except OSError:
        return False
    return _plain_jpegs(paths, stamps)


@functools.lru_cache(maxsize=16)
def _plain_jpegs(paths: tuple[str, ...], stamps: tuple) -> bool:
    del stamps  # part of the cache's key only
    return all(plain_jpeg_size(path) is not None for path in paths)


def _jpeg_frame_size(f) -> tuple[int, int] | None:
    """The stored `(height, width)` in the frame header of the JPEG open in `f`."""
    f.seek(2)
    for _ in range(1000):  # segments before the frame header: APPn, DQT, COM, ...
        if f.read(1) != b"\xff":
            return None
        byte = f.read(1)
        while byte == b"\xff":  # fill bytes before a marker
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers carry no length
            continue
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return None
        length = struct.unpack(">H", length_bytes)[0]
        if marker in _JPEG_FRAME_MARKERS:
            frame = f.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            # A height of 0 is defined later by a DNL marker: unknown here.
            return (height, width) if height else None
        if marker in (0xD9, 0xDA) or length < 2:  # end of image / scan before any frame
            return None
        f.seek(length - 2, os.SEEK_CUR)
    return None
