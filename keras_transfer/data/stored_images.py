"""What a TFRecord shard stores of an image file (`records.write_records(shorter_side=...)`).

By default a shard holds the file's bytes as they are. With `shorter_side`, an image whose
shorter side is longer is stored smaller: decoded, turned upright by its EXIF orientation
(the tag would not survive re-encoding), resized with antialiasing so that its shorter side
is `shorter_side` (aspect ratio kept) and re-encoded as a JPEG of `jpeg_quality`. Training
decodes every image every epoch, and decoding costs in proportion to the pixels: a photo
stored at the size training resizes it to anyway decodes several times faster, the way FFCV's
`max_resolution` and the downsampled ImageNet variants prepare data once for many epochs.
The price is one lossy re-encoding, and a ceiling: such records cannot serve a load size
above `shorter_side` (`check_stored_size` refuses it rather than enlarge the images).

With `raw_pixels=True` as well, the resized image is stored as its decoded pixels (uint8,
row-major, with its `height` and `width`) instead of a JPEG: nothing is decoded when training
reads it, at several times the disk (a 256x341 photo is 262 KB; 21,000 cats-and-dogs photos
took 5.0 GB as pixels, 0.60 GB as JPEGs at 256 px, `benchmarks/results/input_pipeline.json`),
the trade of FFCV's `RGBImageField(write_mode="raw")` (Leclerc et al. 2023). On a CPU host
feeding an accelerator, decoding is the input's cost (benchmarks/input_stages.py), so this
is for datasets that fit the disk (better, the page cache) of the training host. The pixels
are the ones a lossless PNG of the resized image would decode to.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence

import tensorflow as tf

from keras_transfer.data import decoding
from keras_transfer.data import exif
from keras_transfer.data.pipeline import PipelineOptions

__all__ = [
    "DEFAULT_JPEG_QUALITY",
    "PIXEL_RECORD_FEATURES",
    "RECORD_FEATURES",
    "check_shorter_side",
    "check_stored_size",
    "estimated_pixel_bytes",
    "record_decoder",
    "stored_bytes",
    "stored_pixels",
    "write_shard",
]

DEFAULT_JPEG_QUALITY = 95
# What each record holds: `write_shard` writes it, `record_decoder` parses it (`key`, the
# image's relative path, is written for people and tools, not read back).
RECORD_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}
PIXEL_RECORD_FEATURES = {
    **RECORD_FEATURES,
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
}


def check_shorter_side(
    shorter_side: int | None, jpeg_quality: int, raw_pixels: bool = False
) -> None:
    """`ValueError` naming a `shorter_side` that is not None or a positive integer, a
    `jpeg_quality` outside 1..100, or `raw_pixels` without a `shorter_side`."""
    if not isinstance(raw_pixels, bool):
        raise ValueError(f"raw_pixels must be True or False, got {raw_pixels!r}.")
    if raw_pixels and shorter_side is None:
        raise ValueError(
            "raw_pixels=True stores each image's decoded pixels at the size training resizes "
            "it to: give that size as shorter_side, e.g. shorter_side=256 for training at "
            "224 px (image_size / crop_fraction)."
        )
    if shorter_side is not None and (
        isinstance(shorter_side, bool) or not isinstance(shorter_side, int) or shorter_side < 1
    ):
        raise ValueError(
            f"shorter_side must be None (store the files as they are) or a positive number of "
            f"pixels, e.g. 256 for training at 224 px, got {shorter_side!r}."
        )
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int):
        raise ValueError(f"jpeg_quality must be an integer in 1..100, got {jpeg_quality!r}.")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be an integer in 1..100, got {jpeg_quality!r}.")


def check_stored_size(shorter_side: int | None, load_size: tuple[int, int], where: str) -> None:
    """Refuses to read records stored at `shorter_side` for images resized to `load_size`
    (`image_size / crop_fraction`): their pixels would be enlarged, not the originals'."""
    if shorter_side is not None and max(load_size) > shorter_side:
        raise ValueError(
            f"The records in {where} store images with their shorter side at {shorter_side} "
            f"px, but this image_size and crop_fraction resize them to {load_size[0]}x"
            f"{load_size[1]}: they would be enlarged. Lower image_size, or write the records "
            f"again with kt.data.write_records(..., shorter_side={max(load_size)}) or more "
            "(None stores the files as they are)."
        )


def stored_bytes(
    paths: Sequence[str], shorter_side: int | None, jpeg_quality: int = DEFAULT_JPEG_QUALITY
) -> Iterator[bytes]:
    """The bytes to store for each of `paths`, in order: the file itself, or (with
    `shorter_side`, for an image larger than that) the smaller upright JPEG. Decoded in
    parallel with `tf.data`."""
    if not paths:
        return iter(())
    files = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        tf.io.read_file, num_parallel_calls=tf.data.AUTOTUNE
    )
    if shorter_side is not None:
        files = files.map(
            lambda contents: _smaller(contents, shorter_side, jpeg_quality),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return (bytes(contents) for contents in files.as_numpy_iterator())


def _smaller(contents: tf.Tensor, shorter_side: int, jpeg_quality: int) -> tf.Tensor:
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    shortest = tf.reduce_min(tf.shape(image)[:2])
    # Images no larger are stored as they are (bytes, format and EXIF tag unchanged).
    return tf.cond(
        shortest > shorter_side,
        lambda: tf.io.encode_jpeg(
            _resized(_upright(image, contents), shortest, shorter_side), quality=jpeg_quality
        ),
        lambda: contents,
    )


def _upright_resized(contents: tf.Tensor, shorter_side: int) -> tf.Tensor:
    """The stored pixels of `raw_pixels`: upright, and no larger than `shorter_side`."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    shortest = tf.reduce_min(tf.shape(image)[:2])
    upright = _upright(image, contents)
    return tf.cond(
        shortest > shorter_side,
        lambda: _resized(upright, shortest, shorter_side),
        lambda: upright,
    )


def _upright(image: tf.Tensor, contents: tf.Tensor) -> tf.Tensor:
    return exif.apply_exif_orientation(image, exif.read_exif_orientation(contents))


def _resized(upright: tf.Tensor, shortest: tf.Tensor, shorter_side: int) -> tf.Tensor:
    """`upright` resized (antialiased) so that its shorter side is `shorter_side`, uint8."""
    upright_sides = tf.cast(tf.shape(upright)[:2], tf.float64)
    scale = shorter_side / tf.cast(shortest, tf.float64)
    size = tf.maximum(tf.cast(tf.round(upright_sides * scale), tf.int32), shorter_side)
    smaller = tf.image.resize(upright, size, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(smaller), 0, 255), tf.uint8)


def stored_pixels(paths: Sequence[str], shorter_side: int) -> Iterator[tuple[bytes, int, int]]:
    """`(pixels, height, width)` to store for each of `paths`, in order (`raw_pixels=True`):
    the image decoded, turned upright by its EXIF orientation and, when its shorter side is
    longer than `shorter_side`, resized to it as `stored_bytes` resizes (the same pixels it
    encodes as a JPEG); `pixels` the uint8 values, row-major, 3 channels."""
    if not paths:
        return iter(())
    files = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        lambda path: _upright_resized(tf.io.read_file(path), shorter_side),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ((pixels.tobytes(), *pixels.shape[:2]) for pixels in files.as_numpy_iterator())


def estimated_pixel_bytes(paths: Sequence[str], shorter_side: int) -> int:
    """About how many bytes the records of `paths` take with `raw_pixels`: their pixels at
    `shorter_side` (each image's size read from its header, `decoding.read_image_size`; an
    unreadable header counts as a 4:3 image)."""
    total = 0
    for path in paths:
        height, width = decoding.read_image_size(path) or (shorter_side, shorter_side * 4 // 3)
        scale = min(1.0, shorter_side / max(1, min(height, width)))
        total += round(height * scale) * round(width * scale) * 3 + 64
    return total


def write_shard(
    path: str,
    records: Sequence[tuple[str, int, str]],
    plain: list[bool],
    shorter_side: int | None = None,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    raw_pixels: bool = False,
) -> None:
    """Writes one TFRecord shard of `records` (`(image path, class index, key)`): each a
    `tf.train.Example` of `image` (`stored_bytes`; with `raw_pixels`, `stored_pixels` and
    its `height` and `width`), `label` and `key`. Appends to `plain` whether each stored
    image is a plain JPEG (`decoding.plain_jpeg_size`), for the manifest's `plain_jpegs`."""
    paths = [image for image, _, _ in records]
    if raw_pixels:
        stored = stored_pixels(paths, shorter_side)
    else:
        stored = ((contents,) for contents in stored_bytes(paths, shorter_side, jpeg_quality))
    with tf.io.TFRecordWriter(path) as writer:
        for (_, label, key), (contents, *sides) in zip(records, stored, strict=True):
            plain.append(
                not raw_pixels and decoding.plain_jpeg_size(io.BytesIO(contents)) is not None
            )
            feature = {
                "image": _bytes_feature(contents),
                "label": _int_feature(label),
                "key": _bytes_feature(key.encode()),
            }
            if raw_pixels:
                feature.update(height=_int_feature(sides[0]), width=_int_feature(sides[1]))
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def record_decoder(
    options: PipelineOptions, central_crop: bool, plain_jpeg: bool, raw_pixels: bool
) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """`serialized record -> (image, int32 label)`: the decoder of image files
    (`PipelineOptions.decode_bytes`) on the stored bytes or, for `raw_pixels` records, its
    crop of the stored pixels (`PipelineOptions.decode_pixels`)."""

    def decode(serialized):
        if raw_pixels:
            example = tf.io.parse_single_example(serialized, PIXEL_RECORD_FEATURES)
            sides = tf.stack([example["height"], example["width"], 3])
            pixels = tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), sides)
            image = options.decode_pixels(pixels, central_crop=central_crop)
        else:
            example = tf.io.parse_single_example(serialized, RECORD_FEATURES)
            image = options.decode_bytes(
                example["image"], central_crop=central_crop, plain_jpeg=plain_jpeg
            )
        return image, tf.cast(example["label"], tf.int32)

    return decode
