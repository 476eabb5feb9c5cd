"""EXIF orientation of JPEG files: read from the file's bytes, applied to its decoded pixels.

A phone stores a photo as its sensor saw it and records in the EXIF tag 0x0112 how to turn
it upright; every image viewer applies that tag, TensorFlow's JPEG decoder ignores it. Without
this module a rotated phone photo would train (and be predicted) lying on its side, while its
owner sees it upright. `decoding.decode_and_resize`, the one decode path of the training,
validation and test loaders, the feature cache, `predict` and the export checks, reads the tag
with `read_exif_orientation` and applies it with `apply_exif_orientation`.

Both are TensorFlow ops, so they run inside a `tf.data` map, in parallel and in the graph
(the input pipeline is `tf.data` whichever Keras backend trains). Each op of a `tf.data` map
has a fixed cost whatever its size, and a branch (`tf.cond`, `tf.while_loop`) does not save
the ops of the branch not taken, so the parser is a short straight line: the walk over the
first `EXIF_MAX_SEGMENTS` segments unrolled and checked at once, IFD0's first entries read as
one block. The turn is a transpose and a reverse, behind one branch that hands an image
stored upright through without copying it. A `tf.numpy_function` around
`jpeg_orientation` would cost less CPU per image, but it takes the GIL in every parallel call
and ties the pipeline to the Python process; the cost of these ops is small next to decoding
a photo. `jpeg_orientation` is the same parser in pure Python (the tests hold the two to the
same answers), for `decoding.read_image_size`, which reads headers only.

The tag values (what is done to the stored pixels to show them, as viewers and
`PIL.ImageOps.exif_transpose` do): 1 as stored, 2 flip left-right, 3 rotate 180, 4 flip up-down,
5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise. A missing,
malformed or truncated EXIF segment, or a value outside 1..8, reads as 1: never an error. PNG,
GIF, BMP and WebP images are left as stored.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np
import tensorflow as tf

__all__ = [
    "EXIF_HEADER",
    "EXIF_MAX_SEGMENTS",
    "EXIF_SCAN_BYTES",
    "apply_exif_orientation",
    "jpeg_orientation",
    "read_exif_orientation",
    "swaps_sides",
    "tiff_orientation",
]

# An APP1 segment holds EXIF when its data starts with these bytes; the TIFF structure
# (byte order, IFD0 and its entries) follows them.
EXIF_HEADER = b"Exif\x00\x00"
# EXIF is looked for among the first application segments (APPn, COM) after the
# start-of-image marker, within the first bytes of the file. The standard puts it first;
# JFIF files put their APP0 before it; some writers add XMP or an ICC profile in between.
# The walk stops at the first other marker (a table, the frame) or malformed one.
EXIF_MAX_SEGMENTS = 4
EXIF_SCAN_BYTES = 1 << 17
_ORIENTATION_TAG = 0x0112
# Entries of IFD0 read: its tags are sorted, and 0x0112 is at most its twelfth.
_MAX_ENTRIES = 32
_SHORT, _LONG = 3, 4  # TIFF field types the tag is written with (SHORT by the standard)
_APP0, _APP1, _APP15, _COM = 0xE0, 0xE1, 0xEF, 0xFE
# Marker, length and EXIF header: the bytes that identify an EXIF segment.
_SEGMENT_HEADER = 4 + len(EXIF_HEADER)
# The smallest EXIF segment length worth reading: its header and TIFF's 8-byte header.
_MIN_EXIF_LENGTH = 2 + len(EXIF_HEADER) + 8


def swaps_sides(orientation: int) -> bool:
    """Whether an image stored with this EXIF `orientation` shows with height and width
    swapped (5 to 8: a transpose or a quarter turn)."""
    return 5 <= orientation <= 8


def _is_application(marker: int) -> bool:
    return _APP0 <= marker <= _APP15 or marker == _COM


def _offsets(count: int) -> np.ndarray:
    # int64 on every platform (NumPy's default integer is 32-bit on Windows before NumPy 2).
    return np.arange(count, dtype=np.int64)


def jpeg_orientation(f: BinaryIO) -> int:
    """The EXIF orientation (1 to 8) of the JPEG file open in `f` (binary, seekable); 1 for
    any other file and for a JPEG without EXIF or with a malformed or truncated one.

    The pure-Python twin of `read_exif_orientation` (the same walk and checks, the same
    answers), reading only the segment headers and the EXIF segment.
    """
    f.seek(0)
    if f.read(2) != b"\xff\xd8":
        return 1
    position = 2
    for _ in range(EXIF_MAX_SEGMENTS):
        f.seek(position)
        header = f.read(max(min(_SEGMENT_HEADER, EXIF_SCAN_BYTES - position), 0))
        if len(header) < 4 or header[0] != 0xFF or not _is_application(header[1]):
            return 1
        length = struct.unpack(">H", header[2:4])[0]
        if length < 2:
            return 1
        if header[1] == _APP1 and length >= _MIN_EXIF_LENGTH and header[4:] == EXIF_HEADER:
            f.seek(position + 4)
            return tiff_orientation(f.read(min(length - 2, EXIF_SCAN_BYTES - position - 4)))
        position += 2 + length
    return 1


def tiff_orientation(segment: bytes) -> int:
    """The orientation (1 to 8) recorded in the data of an APP1 segment (`EXIF_HEADER` and
    the TIFF structure after it); 1 when it is not EXIF, malformed, truncated or out of range.
    The first orientation entry among IFD0's first `_MAX_ENTRIES` that lies wholly inside
    `segment` counts."""
    if not segment.startswith(EXIF_HEADER):
        return 1
    tiff = segment[len(EXIF_HEADER) :]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8 or struct.unpack(order + "H", tiff[2:4])[0] != 42:
        return 1
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    if ifd < 8 or ifd + 2 > len(tiff):
        return 1
    count = struct.unpack(order + "H", tiff[ifd : ifd + 2])[0]
    count = min(count, _MAX_ENTRIES)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind = struct.unpack(order + "HH", tiff[entry : entry + 4])
        if tag != _ORIENTATION_TAG or kind not in (_SHORT, _LONG):
            continue
        value_format = order + ("H" if kind == _SHORT else "I")
        value = struct.unpack_from(value_format, tiff, entry + 8)[0]
        return value if 1 <= value <= 8 else 1
    return 1


@tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
def read_exif_orientation(contents: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (an int32 scalar, 1 to 8) of the file `contents` (a string scalar,
    the whole file or at least its first segments); 1 for a non-JPEG file, a JPEG without
    EXIF or with a malformed or truncated one.

    TensorFlow ops only, few and in a straight line (see the module's docstring): the walk
    over the first `EXIF_MAX_SEGMENTS` segments is unrolled and checked all at once, the
    first `_MAX_ENTRIES` entries of IFD0 are read as one block. Every read past the bytes at
    hand reads 0 and every offset is checked against the segment's end, so no file makes it
    fail.
    """
    head = tf.io.decode_raw(tf.strings.substr(contents, 0, EXIF_SCAN_BYTES), tf.uint8)
    size = tf.size(head, out_type=tf.int64)
    # One zero byte past the end: the index of every read is clipped onto [0, size]. Only
    # the bytes read are widened to int64 (not the whole head).
    padded = tf.concat([head, tf.zeros([1], tf.uint8)], 0)

    def read(offsets):
        return tf.cast(tf.gather(padded, tf.clip_by_value(offsets, 0, size)), tf.int64)

    start, end = _find_exif(read, size)
    return tf.cast(_tiff_orientation(read, start, end), tf.int32)


# Bytes 0, 1 and 4 to 9 of a segment (marker, EXIF header) as an EXIF segment has them.
_EXIF_MASK = np.array([1, 1, 0, 0, 1, 1, 1, 1, 1, 1], np.int64)
_EXIF_PATTERN = np.array([0xFF, _APP1, 0, 0, *EXIF_HEADER], np.int64)
_APPLICATION_MARKERS = np.array([_is_application(marker) for marker in range(256)])


def _find_exif(read, size):
    """`(start, end)`: where the TIFF data of the APP1 "Exif" segment starts and where the
    segment ends (within the bytes at hand), or `(-1, -1)` when there is none."""
    # Where each of the first segments would start if those before it were well formed.
    positions, headers = [tf.constant(2, tf.int64)], []
    for _ in range(EXIF_MAX_SEGMENTS):
        headers.append(read(positions[-1] + _offsets(_SEGMENT_HEADER)))
        positions.append(positions[-1] + 2 + headers[-1][2] * 256 + headers[-1][3])
    positions, headers = tf.stack(positions[:-1]), tf.stack(headers)
    lengths = headers[:, 2] * 256 + headers[:, 3]
    application = (
        (headers[:, 0] == 0xFF)
        & tf.gather(_APPLICATION_MARKERS, headers[:, 1])
        & (lengths >= 2)
        & (positions + 4 <= size)
    )
    is_jpeg = tf.reduce_all(tf.equal(read(_offsets(2)), [0xFF, 0xD8]))
    # A segment counts when it and every one before it is an application segment.
    walked = tf.equal(tf.math.cumprod(tf.cast(application, tf.int64)), 1) & is_jpeg
    exif_segments = walked & (lengths >= _MIN_EXIF_LENGTH)
    exif_segments &= tf.reduce_all(tf.equal(headers * _EXIF_MASK, _EXIF_PATTERN), axis=1)
    first = tf.argmax(tf.cast(exif_segments, tf.int32), output_type=tf.int64)
    found = tf.reduce_any(exif_segments)
    position, length = tf.gather(positions, first), tf.gather(lengths, first)
    start = tf.where(found, position + _SEGMENT_HEADER, -1)
    end = tf.where(found, tf.minimum(position + 2 + length, size), -1)
    return start, end


def _byte_weights(little_endian: bool) -> np.ndarray:
    """A `(12, 4)` matrix: a 12-byte IFD entry times it gives its tag, its type, its value
    as a SHORT and as a LONG (in float64, exact for these 32-bit numbers)."""
    weights = np.zeros((12, 4))
    for column, (first, width) in enumerate([(0, 2), (2, 2), (8, 2), (8, 4)]):
        powers = [256.0**k for k in range(width)]
        weights[first : first + width, column] = powers if little_endian else powers[::-1]
    return weights


_ENTRY_WEIGHTS = np.stack([_byte_weights(False), _byte_weights(True)])
_IFD_OFFSETS = np.concatenate([_offsets(12) % 2, 2 + _offsets(12 * _MAX_ENTRIES)])


def _tiff_orientation(read, start, end):
    """The orientation in the TIFF structure at `[start, end)` (1 when `start` is -1): byte
    order, the magic 42 and IFD0's offset (the header is read as an entry would be: its "tag"
    is the byte order, its "type" the 42, its "LONG" the offset), then IFD0's entries."""
    # The TIFF header laid out as an entry: its bytes 4 to 7 (the offset) in the LONG's place.
    header = read(start + np.array([0, 1, 2, 3, 0, 0, 0, 0, 4, 5, 6, 7], np.int64))
    order = header[0] * 256 + header[1]
    little = tf.equal(order, 0x4949)  # "II"
    weights = tf.gather(_ENTRY_WEIGHTS, tf.cast(little, tf.int32))

    def fields(block):
        return tf.cast(tf.matmul(tf.cast(block, tf.float64), weights), tf.int64)

    _, magic, _, ifd = tf.unstack(fields(header[None])[0])
    ifd += start
    # IFD0 in one read: its entry count laid out as the tag of a first row (its other bytes
    # weigh nothing), then its first entries.
    block = fields(tf.reshape(read(ifd + _IFD_OFFSETS), (-1, 12)))
    count, entries = block[0, 0], block[1:]
    tags, kinds, shorts, longs = tf.unstack(entries, axis=1)
    valid = (start >= 0) & (little | tf.equal(order, 0x4D4D)) & tf.equal(magic, 42)
    valid &= (ifd >= start + 8) & (ifd + 2 <= end)
    # Entries that exist (below `count`) and lie wholly inside the segment.
    inside = tf.range(_MAX_ENTRIES, dtype=tf.int64) < tf.minimum(count, (end - ifd - 2) // 12)
    matches = inside & valid & tf.equal(tags, _ORIENTATION_TAG)
    matches &= tf.equal(kinds, _SHORT) | tf.equal(kinds, _LONG)
    values = tf.where(tf.equal(kinds, _SHORT), shorts, longs)
    # The first matching entry, as the Python parser takes it.
    value = tf.gather(values, tf.argmax(tf.cast(matches, tf.int32)))
    value = tf.where(tf.reduce_any(matches), value, 1)
    return tf.where((value >= 1) & (value <= 8), value, 1)


# How each orientation (index: orientation - 1) turns the stored pixels: whether it is
# transposed, then whether the result is flipped up-down (its rows reversed) and
# left-right (its columns reversed).
_TURNS = np.array(
    [
        [0, 0, 0],  # 1: as stored
        [0, 0, 1],  # 2: flip left-right
        [0, 1, 1],  # 3: rotate 180
        [0, 1, 0],  # 4: flip up-down
        [1, 0, 0],  # 5: transpose (about the main diagonal)
        [1, 0, 1],  # 6: rotate 90 clockwise
        [1, 1, 1],  # 7: transverse (about the other diagonal)
        [1, 1, 0],  # 8: rotate 90 counter-clockwise
    ],
    np.int32,
)
_PERMUTATIONS = np.array([[0, 1, 2], [1, 0, 2]], np.int32)


def apply_exif_orientation(image: tf.Tensor, orientation: tf.Tensor | int) -> tf.Tensor:
    """The `(height, width, channels)` `image` as a viewer shows it, given the EXIF
    `orientation` it was stored with (1 to 8; other values leave it as stored).

    A transpose and a reverse whose permutation and axes are tensors, not eight branches;
    one branch only for orientation 1, so that the image is handed through without a copy
    (a reverse of no axis still copies). A strided slice with negative steps would do the
    flips in one op, but copies uint8 images far slower than a reverse.
    """
    image = tf.convert_to_tensor(image)
    index = tf.cast(orientation, tf.int32) - 1
    index = tf.where((index >= 0) & (index < 8), index, 0)

    def turned():
        turn = tf.gather(_TURNS, index)
        transposed = tf.transpose(image, tf.gather(_PERMUTATIONS, turn[0]))
        # The axes to reverse: those of the flips that apply (none, one or both).
        return tf.reverse(transposed, tf.where(turn[1:] > 0)[:, 0])

    oriented = tf.cond(index > 0, turned, lambda: image)
    oriented.set_shape((None, None, image.shape[-1]))
    return oriented
