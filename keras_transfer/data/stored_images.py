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
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from collections.abc import Sequence

import tensorflow as tf

from keras_transfer.data import decoding
from keras_transfer.data import exif

__all__ = [
    "DEFAULT_JPEG_QUALITY",
    "check_shorter_side",
    "check_stored_size",
    "stored_bytes",
    "write_shard",
]

DEFAULT_JPEG_QUALITY = 95


def check_shorter_side(shorter_side: int | None, jpeg_quality: int) -> None:
    """`ValueError` naming a `shorter_side` that is not None or a positive integer, or a
    `jpeg_quality` outside 1..100."""
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
    sides = tf.shape(image)[:2]
    shortest = tf.reduce_min(sides)

    def resized() -> tf.Tensor:
        upright = exif.apply_exif_orientation(image, exif.read_exif_orientation(contents))
        upright_sides = tf.cast(tf.shape(upright)[:2], tf.float64)
        scale = shorter_side / tf.cast(shortest, tf.float64)
        size = tf.maximum(tf.cast(tf.round(upright_sides * scale), tf.int32), shorter_side)
        smaller = tf.image.resize(upright, size, antialias=True)
        pixels = tf.cast(tf.clip_by_value(tf.round(smaller), 0, 255), tf.uint8)
        return tf.io.encode_jpeg(pixels, quality=jpeg_quality)

    # Images no larger are stored as they are (bytes, format and EXIF tag unchanged).
    return tf.cond(shortest > shorter_side, resized, lambda: contents)


def write_shard(
    path: str,
    records: Sequence[tuple[str, int, str]],
    plain: list[bool],
    shorter_side: int | None = None,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
) -> None:
    """Writes one TFRecord shard of `records` (`(image path, class index, key)`): each a
    `tf.train.Example` of `image` (`stored_bytes`), `label` and `key`. Appends to `plain`
    whether each stored image is a plain JPEG (`decoding.plain_jpeg_size`), for the
    manifest's `plain_jpegs`."""
    contents_of = stored_bytes([image for image, _, _ in records], shorter_side, jpeg_quality)
    with tf.io.TFRecordWriter(path) as writer:
        for (_, label, key), contents in zip(records, contents_of, strict=True):
            plain.append(decoding.plain_jpeg_size(io.BytesIO(contents)) is not None)
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[contents])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
