"""TFRecord shards of an image dataset, for datasets too large to list and check from a
folder on every run: `write_records` writes them once, `records_dataset` reads them as the
`ImageData` of the folder loader.

A records folder holds `records_manifest.json` (class names, counts per split and class,
the shards, how the split was made, the skip report) and one folder of shards per split:
`train/part-00000-of-00004.tfrecord` ... Each record is a `tf.train.Example` with `image`,
the image file's encoded bytes unchanged (a JPEG stays a JPEG: shards are about the size of
the files, and reading one is a few large sequential reads instead of one small file per
image) or, with `shorter_side`, the image stored smaller (`stored_images`; with
`raw_pixels`, its decoded pixels and their `height` and `width`), `label` (the int64 class
index) and `key` (the image's path, relative to the deepest folder holding every image).

Why the splits are written into the records, each split in its own shards: the folder
loader's split (`splits.assign_splits`: a stable hash of the seed and each image's relative
path, stratified, with per-class minimums) needs every key and label at once, which a reader
streaming shards has only after a full pass; validating then reads its own shards only; and
records written with the folder loader's `seed` and fractions hold exactly its validation
and test images. Another split means writing the records again.

The training split is written in a seeded random order, so each shard holds a sample of
every class; `records_dataset` reads its shards interleaved, the shard order shuffled every
epoch, through a seeded shuffle buffer of stored records: one seed, one order of examples,
on every run. Validation and test are read in the listing order. Images are decoded by the
folder loader's decoders after its checks: a file above `max_pixels` (by its header),
undecodable or in a format TensorFlow does not decode is left out when writing, with its
reason in the skip report.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_transfer.data import imbalance
from keras_transfer.data import stored_images
from keras_transfer.data.decoding import DEFAULT_MAX_PIXELS
from keras_transfer.data.decoding import check_max_pixels
from keras_transfer.data.image_data import ImageData
from keras_transfer.data.listing import DatasetFiles
from keras_transfer.data.listing import list_dataset_folder
from keras_transfer.data.listing import list_pairs
from keras_transfer.data.pipeline import PipelineOptions
from keras_transfer.data.pipeline import pipeline_options
from keras_transfer.data.tables import list_table_files
from keras_transfer.utils import files as file_system
from keras_transfer.utils import reliability

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "MANIFEST_FILE",
    "RECORD_SPLITS",
    "SHUFFLE_BUFFER_BYTES",
    "default_shuffle_buffer",
    "is_records_folder",
    "read_manifest",
    "records_dataset",
    "write_records",
]

logger = logging.getLogger("keras_transfer")

MANIFEST_FILE = "records_manifest.json"
# About 100 MB of ImageNet-sized JPEGs per shard: large sequential reads, and enough shards
# of a large dataset to read several at once and shuffle their order.
DEFAULT_SHARD_SIZE = 1024
RECORD_SPLITS = ("train", "validation", "test")
# The default shuffle buffer's memory (`default_shuffle_buffer`).
SHUFFLE_BUFFER_BYTES = 256 * 2**20
_FORMAT = "keras-transfer records"
# Version 2 added `raw_pixels`; version 1 folders (encoded images only) read unchanged.
_VERSION = 2
_READABLE_VERSIONS = (1, 2)


def is_records_folder(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds records written by `write_records` (its manifest); on any
    `tf.io.gfile` file system (`gs://` on a TPU host), as the shards are read."""
    return file_system.isfile(os.path.join(os.fspath(directory), MANIFEST_FILE))


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a records folder, checked: the format, and every shard it lists."""
    directory = os.fspath(directory)
    path = os.path.join(directory, MANIFEST_FILE)
    if not file_system.isfile(path):
        raise FileNotFoundError(
            f"{directory!r} has no {MANIFEST_FILE}: it is not a records folder. Write one with "
            "kt.data.write_records(image_folder, out_dir), or read an image folder with "
            "kt.image_folder_dataset."
        )
    with file_system.open_file(path, encoding="utf-8") as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as error:
            manifest = {"format": f"unreadable JSON ({error})"}
    manifest = manifest if isinstance(manifest, dict) else {}
    if manifest.get("format") != _FORMAT or manifest.get("version") not in _READABLE_VERSIONS:
        raise ValueError(
            f"{path} is not a version {_VERSION} {_FORMAT} manifest (format "
            f"{manifest.get('format')!r}, version {manifest.get('version')!r}): write the "
            "records again with this version's kt.data.write_records(..., overwrite=True)."
        )
    missing = [
        name
        for entry in manifest["splits"].values()
        for name in entry["shards"]
        if not file_system.isfile(os.path.join(directory, *name.split("/")))
    ]
    if missing:
        raise FileNotFoundError(
            f"The records folder {directory!r} lacks {len(missing)} shard(s) its manifest "
            f"lists ({', '.join(missing[:5])}): it is incomplete or was moved in part. Write "
            "it again with kt.data.write_records(..., overwrite=True)."
        )
    return manifest


# --- writing --------------------------------------------------------------------------------


def write_records(
    source: Any,
    out_dir: str | os.PathLike,
    shard_size: int = DEFAULT_SHARD_SIZE,
    *,
    overwrite: bool = False,
    validation_split: float = 0.2,
    validation_dir: str | os.PathLike | None = None,
    test_split: float = 0.0,
    test_dir: str | os.PathLike | None = None,
    seed: int = 1337,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    image_root: str | os.PathLike | None = None,
    path_column: str = "path",
    label_column: str = "label",
    bad_rows: str = "error",
    class_names: Sequence[str] | None = None,
    shorter_side: int | None = None,
    jpeg_quality: int = stored_images.DEFAULT_JPEG_QUALITY,
    raw_pixels: bool = False,
) -> dict[str, Any]:
    """Writes an image dataset as TFRecord shards of the encoded image files and their
    labels, one set of shards per split, and a manifest (layout: the module docstring).

    The images are listed, checked and split as the folder loader does, with its arguments:
    what cannot be used (undecodable, above `max_pixels`, TIFF...) is left out with its
    reason in the manifest's `skip_reasons`, and records written with the seed and fractions
    of a later `image_folder_dataset` call hold its splits. Each shard, then the manifest, is
    written atomically (`reliability.write_atomically`): a manifest means a complete folder.

    Args:
        source: an image folder (class subfolders, or `train/` with `val/` / `test/`), a CSV
            file or pandas DataFrame with `path_column` (relative to `image_root`) and
            `label_column` (class names), a list of `(path, label)` pairs (labels: class
            names, or indices into `class_names`), or a split `listing.DatasetFiles`.
        out_dir: the records folder to write; it must be empty or new.
        shard_size: images per shard.
        overwrite: write into a non-empty `out_dir`, first deleting the records there
            (their manifest and shards; other files stay).
        validation_split, validation_dir, test_split, test_dir, seed, max_pixels: as in
            `image_folder_dataset` (the split dirs are for folders; a `DatasetFiles` is
            split already: give the fractions it was made with, for the manifest).
        image_root, path_column, label_column, bad_rows: for a table, as in
            `image_table_dataset` (multiclass).
        class_names: for pairs with integer labels, the name of each class index.
        shorter_side: `None` stores the files' bytes; N stores an image whose shorter side
            is longer upright, resized to N, as a JPEG of `jpeg_quality` (`stored_images`):
            fewer pixels to decode, for load sizes (`image_size / crop_fraction`) up to N.
        jpeg_quality: the JPEG quality of images stored smaller.
        raw_pixels: with `shorter_side`, store the resized images' decoded pixels, not
            JPEGs: nothing to decode when read, about eight times the disk (`stored_images`).

    Returns:
        The manifest written: `class_names`, `splits` (`count`, `class_counts`, `shards`)...

    Example:
    ```python
    kt.data.write_records("photos", "photos_records", shard_size=1024, validation_split=0.1)
    data = kt.data.records_dataset("photos_records", image_size=224, batch_size=64)
    ```
    """
    _check_writing(shard_size, max_pixels, shorter_side, jpeg_quality, raw_pixels)
    out_dir = os.path.abspath(os.fspath(out_dir))
    _check_out_dir(out_dir, source, overwrite)
    files = _dataset_files(
        source, validation_split=validation_split, validation_dir=validation_dir,
        test_split=test_split, test_dir=test_dir, seed=seed, max_pixels=max_pixels,
        image_root=image_root, path_column=path_column, label_column=label_column,
        bad_rows=bad_rows, class_names=class_names,
    )  # fmt: skip
    parts = {split: _split_files(files, split) for split in RECORD_SPLITS}
    stored = {"shorter_side": shorter_side, "jpeg_quality": jpeg_quality, "raw_pixels": raw_pixels}
    sizes = _make_room(
        out_dir, [p for paths, _ in parts.values() for p in paths], overwrite, stored
    )
    written = _write_splits(out_dir, parts, len(files.class_names), shard_size, seed, stored)
    manifest = _manifest(source, files, written, shard_size=shard_size, seed=seed,
                         max_pixels=max_pixels, image_bytes=sizes, **stored,
                         fractions={"validation": validation_split, "test": test_split})  # fmt: skip
    return _write_manifest(out_dir, manifest)


def _make_room(out_dir: str, paths: list[str], overwrite: bool, stored: dict[str, Any]) -> int:
    """Creates `out_dir` (emptied of earlier records with `overwrite`) and checks that its
    disk holds the records of `paths`; returns the bytes of the image files."""
    image_bytes = sum(os.path.getsize(path) for path in paths)
    needed = image_bytes
    if stored["raw_pixels"]:
        needed = stored_images.estimated_pixel_bytes(paths, stored["shorter_side"])
    os.makedirs(out_dir, exist_ok=True)
    if overwrite:
        _remove_records(out_dir)
    reliability.check_free_space(out_dir, int(needed * 1.02) + 2**20, "the records")
    return image_bytes


def _check_writing(shard_size, max_pixels, shorter_side, jpeg_quality, raw_pixels) -> None:
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}.")
    check_max_pixels(max_pixels)
    stored_images.check_shorter_side(shorter_side, jpeg_quality, raw_pixels)


def _write_manifest(out_dir: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Writes the manifest last, atomically: a folder with one is complete."""
    text = json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
    reliability.write_atomically(
        os.path.join(out_dir, MANIFEST_FILE), lambda temporary: _write_text(temporary, text)
    )
    counts = ", ".join(f"{entry['count']} {split}" for split, entry in manifest["splits"].items())
    logger.info("Wrote %s images as TFRecord shards to %s.", counts, out_dir)
    return manifest


def _manifest(source, files: DatasetFiles, written, *, fractions, **facts) -> dict[str, Any]:
    """What `records_dataset` reads back: the classes, the shards and counts of each split,
    how the splits were made, and the skip report; `facts` as they are."""
    return {
        "format": _FORMAT,
        "version": _VERSION,
        "class_names": list(files.class_names),
        "splits": written,
        **{
            f"{split}_split": fractions[split] if split in files.held_out else 0.0
            for split in RECORD_SPLITS[1:]
        },
        # Where each evaluation split came from: "folder", "held_out" or "none".
        "split_sources": {split: _source_of(split, files, written) for split in RECORD_SPLITS[1:]},
        **facts,
        "source": _describe(source, files),
        "skip_reasons": dict(files.skip_reasons),
        "warnings": list(files.warnings),
    }


def _write_splits(
    out_dir, parts, num_classes, shard_size, seed, stored
) -> dict[str, dict[str, Any]]:
    """Writes the shards of each non-empty split of `parts` (`split -> (paths, labels)`);
    their manifest entries. Keys are relative to the folder holding every image."""
    root = _common_folder([path for paths, _ in parts.values() for path in paths])
    written = {}
    for split, (paths, labels) in parts.items():
        if not paths:
            continue
        keys = [os.path.relpath(os.path.abspath(p), root).replace(os.sep, "/") for p in paths]
        # Training shards each hold a random sample; evaluation splits keep the listing order.
        order = np.arange(len(paths))
        if split == "train":
            order = np.random.default_rng(seed).permutation(len(paths))
        written[split] = _write_split(
            out_dir, split, paths, labels, keys, order, shard_size, stored
        )
        written[split]["class_counts"] = np.bincount(labels, minlength=num_classes).tolist()
    return written


def _source_of(split: str, files: DatasetFiles, written: dict[str, Any]) -> str:
    if split in files.held_out:
        return "held_out"
    return "folder" if split in written else "none"


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _check_out_dir(out_dir: str, source: Any, overwrite: bool) -> None:
    """`out_dir` must be empty or new (or `overwrite`), and outside an image folder source,
    whose listing would find the records' split folders."""
    if isinstance(source, str | os.PathLike) and os.path.isdir(source):
        real_source, real_out = os.path.realpath(source), os.path.realpath(out_dir)
        if real_out == real_source or real_out.startswith(real_source + os.sep):
            raise ValueError(
                f"out_dir {out_dir!r} is inside the image folder {os.fspath(source)!r}: its "
                "train/ and validation/ folders would be listed as images. Write the records "
                "to a folder outside it."
            )
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"out_dir {out_dir!r} is a file: give a folder for the records.")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(
            f"out_dir {out_dir!r} is not empty. Give a new or empty folder, or pass "
            "overwrite=True to replace the records in it."
        )


def _remove_records(out_dir: str) -> None:
    """Deletes earlier records in `out_dir`: the manifest first (so no half-deleted folder
    looks complete), then the shards; nothing else."""
    manifest = os.path.join(out_dir, MANIFEST_FILE)
    if os.path.isfile(manifest):
        os.remove(manifest)
    for split in RECORD_SPLITS:
        folder = os.path.join(out_dir, split)
        for path in glob.glob(os.path.join(glob.escape(folder), "part-*-of-*.tfrecord")):
            os.remove(path)
        if os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)


def _dataset_files(source: Any, **options: Any) -> DatasetFiles:
    """The listed, checked and split images of `source` (see `write_records`)."""
    held_out = dict(
        validation_split=options["validation_split"],
        test_split=options["test_split"],
        seed=options["seed"],
        max_pixels=options["max_pixels"],
    )
    if isinstance(source, DatasetFiles):
        return source
    is_path = isinstance(source, str | os.PathLike)
    if is_path and os.path.isdir(source):
        return list_dataset_folder(
            os.fspath(source),
            validation_dir=options["validation_dir"],
            test_dir=options["test_dir"],
            **held_out,
        )
    if options["validation_dir"] or options["test_dir"]:
        raise ValueError(
            "validation_dir and test_dir are the split folders of an image folder source; a "
            "table or a list of pairs holds out validation_split and test_split instead."
        )
    if (is_path and os.path.isfile(source)) or hasattr(source, "to_dict"):
        if options["image_root"] is None:
            raise ValueError(
                "A label table's paths are relative to image_root: pass image_root=<the "
                "folder of the images>."
            )
        return list_table_files(
            source,
            options["image_root"],
            options["path_column"],
            options["label_column"],
            bad_rows=options["bad_rows"],
            classes=options["class_names"],
            **held_out,
        )
    if is_path:
        raise FileNotFoundError(
            f"{os.fspath(source)!r} is neither an image folder nor a label table (CSV file)."
        )
    if isinstance(source, Sequence) and not isinstance(source, str | bytes):
        return list_pairs(list(source), options["class_names"], **held_out)
    raise TypeError(
        "write_records reads an image folder, a CSV file or DataFrame (with image_root), a "
        f"list of (path, label) pairs or a DatasetFiles, got a {type(source).__name__}."
    )


def _split_files(files: DatasetFiles, split: str) -> tuple[list[str], list[int]]:
    paths = getattr(files, f"{split}_paths")
    labels = np.asarray(getattr(files, f"{split}_labels"))
    if labels.ndim > 1:
        raise ValueError(
            "Records hold one class index per image: multilabel and regression tables are "
            "read with kt.image_table_dataset."
        )
    return list(paths), [int(label) for label in labels]


def _common_folder(paths: list[str]) -> str:
    """The deepest folder holding every one of `paths`: what the records' keys are
    relative to."""
    common = os.path.commonpath([os.path.abspath(path) for path in paths])
    return os.path.dirname(common) if len(set(paths)) == 1 else common


def _describe(source: Any, files: DatasetFiles) -> str:
    if isinstance(source, str | os.PathLike):
        return os.path.abspath(os.fspath(source))
    if isinstance(source, DatasetFiles) or hasattr(source, "to_dict"):
        return files.directory or type(source).__name__
    return f"{len(source)} (path, label) pairs"


def _write_split(out_dir, split, paths, labels, keys, order, shard_size, stored) -> dict[str, Any]:
    """Writes one split's shards, `shard_size` images each in `order`; its manifest entry."""
    count = len(paths)
    num_shards = math.ceil(count / shard_size)
    names, plain = [], []
    for shard in range(num_shards):
        name = f"{split}/part-{shard:05d}-of-{num_shards:05d}.tfrecord"
        chosen = order[shard * shard_size : (shard + 1) * shard_size]
        records = [(paths[i], labels[i], keys[i]) for i in chosen]
        reliability.write_atomically(
            os.path.join(out_dir, split, name.split("/")[1]),
            lambda temporary, records=records: stored_images.write_shard(
                temporary, records, plain, **stored
            ),
        )
        names.append(name)
    # What the reader's decoder may assume (`decoding.plain_jpegs`).
    return {"count": count, "shards": names, "plain_jpegs": bool(plain) and all(plain)}


# --- reading --------------------------------------------------------------------------------


def records_dataset(
    directory: str | os.PathLike,
    image_size: int | tuple[int, int] = (224, 224),
    batch_size: int = 32,
    *,
    seed: int = 1337,
    augment: Any = False,
    shuffle: bool = True,
    cache: bool | str = False,
    drop_remainder: bool = False,
    crop_fraction: float = 0.875,
    resize: str = "crop",
    shuffle_buffer: int | None = None,
    parallel_reads: int = 16,
) -> ImageData:
    """Reads a records folder (`write_records`) as the `ImageData` the folder loader returns:
    the same decoding, crops, augmentation, batches, class counts and skip report, so
    two-phase training, the feature cache and class weights take it unchanged.

    The splits are the ones written (the module docstring says why). Training examples
    come from up to `parallel_reads` shards at a time, the shard order shuffled every
    epoch, through a buffer of `shuffle_buffer` stored images (memory: that many records);
    `seed` fixes both, so one seed always gives the same order. Validation, test and
    `train_unaugmented` are read in the written order.

    Args:
        directory: the records folder.
        image_size, batch_size, seed, augment, shuffle: as in `image_folder_dataset`.
        drop_remainder, crop_fraction, resize: as in `image_folder_dataset`.
        cache: keep decoded images in memory (`True`) or in files with this prefix; off by
            default, since records are for datasets that do not fit in memory (with a
            cache, the training examples are shuffled after it, as the folder loader does).
        shuffle_buffer: stored training images shuffled together; `None`: as many as fill
            256 MB, at most 10,000 (`default_shuffle_buffer`).
        parallel_reads: shards read at the same time.

    Example:
    ```python
    data = kt.data.records_dataset("photos_records", image_size=224, batch_size=64)
    model = kt.create_classifier("mobilenet", len(data.class_names), class_names=data.class_names)
    ```
    """
    _check_reading(shuffle_buffer, parallel_reads)
    directory = os.fspath(directory)
    manifest = read_manifest(directory)
    names = manifest["class_names"]
    options = pipeline_options(
        image_size, batch_size, crop_fraction=crop_fraction, resize=resize, augment=augment,
        shuffle=shuffle, seed=seed, cache=cache, drop_remainder=drop_remainder,
    )  # fmt: skip
    options = dataclasses.replace(options, num_classes=len(names))
    stored_images.check_stored_size(manifest.get("shorter_side"), options.load_size, directory)
    entries = manifest["splits"]
    counts = {split: entries[split]["count"] if split in entries else 0 for split in RECORD_SPLITS}
    options.check_full_batches(counts["train"], counts["validation"])
    reader = _Reader(
        directory, manifest["shard_size"], options,
        _shuffle_buffer(shuffle_buffer, options, directory, manifest), parallel_reads,
        raw_pixels=bool(manifest.get("raw_pixels")),
    )  # fmt: skip
    class_counts = entries["train"]["class_counts"]
    warnings = _loaded_warnings(manifest, counts, directory)
    return ImageData(
        train=reader.split(entries["train"], "train", training=True),
        validation=reader.split(entries.get("validation"), "validation"),
        class_names=list(names),
        num_train=counts["train"],
        num_validation=counts["validation"],
        skipped=list(manifest.get("skip_reasons", {})),
        image_size=options.image_size,
        # Lazy: its images are decoded (and cached) only if it is iterated.
        train_unaugmented=reader.split(entries["train"], "train_unaugmented"),
        skip_reasons=dict(manifest.get("skip_reasons", {})),
        warnings=warnings,
        class_counts=[int(c) for c in class_counts],
        # Every test image counts: no batch of them is dropped.
        test=reader.split(entries.get("test"), "test", drop_remainder=False),
        num_test=counts["test"],
    )


def _check_reading(shuffle_buffer: int | None, parallel_reads: int) -> None:
    for name, value in (("shuffle_buffer", shuffle_buffer), ("parallel_reads", parallel_reads)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _shuffle_buffer(given, options: PipelineOptions, directory: str, manifest) -> int | None:
    """`given`, else the default, read (the shards' sizes) only if a split shuffles records."""
    unused = given is not None or not options.shuffle or options.cache
    return given if unused else default_shuffle_buffer(directory, manifest)


def default_shuffle_buffer(directory: str | os.PathLike, manifest: dict[str, Any]) -> int:
    """The training records `records_dataset` shuffles by default: as many as fill
    `SHUFFLE_BUFFER_BYTES` at the shards' mean record size, 100 to 10,000 (10,000 JPEGs of
    25 KB; about 1,000 records of pixels at 256 px, whose 10,000 would fill 2.4 GB)."""
    entry = manifest["splits"]["train"]
    shards = [os.path.join(os.fspath(directory), *name.split("/")) for name in entry["shards"]]
    mean_bytes = sum(file_system.getsize(path) for path in shards) / max(1, entry["count"])
    return int(min(10_000, max(100, SHUFFLE_BUFFER_BYTES // max(1.0, mean_bytes))))


def _loaded_warnings(manifest: dict[str, Any], counts: dict[str, int], directory: str) -> list[str]:
    """The warnings of the writing, and an imbalance warning (logged) of the training split."""
    names, warnings = manifest["class_names"], list(manifest.get("warnings", []))
    message = imbalance.imbalance_warning(
        np.asarray(manifest["splits"]["train"]["class_counts"]), names
    )
    if message:
        logger.warning(message)
        warnings.append(message)
    logger.info(
        "Loaded %d training, %d validation and %d test images of %d classes from the records "
        "in %s.", counts["train"], counts["validation"], counts["test"], len(names), directory,
    )  # fmt: skip
    return warnings


@dataclasses.dataclass(frozen=True)
class _Reader:
    """Builds the batched dataset of one split's shards."""

    directory: str
    shard_size: int
    options: PipelineOptions
    shuffle_buffer: int | None  # None when no split shuffles stored records
    parallel_reads: int
    # The records store decoded pixels (`write_records(raw_pixels=True)`), not files.
    raw_pixels: bool = False

    def split(self, entry, name, *, training=False, drop_remainder=None):
        """The batches of the split of manifest `entry` (`None` for no split); `name` names
        its cache files."""
        if not entry:
            return None
        options = self.options
        if drop_remainder is not None:
            options = dataclasses.replace(options, drop_remainder=drop_remainder)
        files = [os.path.join(self.directory, *shard.split("/")) for shard in entry["shards"]]
        # Without a cache, training examples are shuffled as encoded bytes, before decoding
        # (the pipeline's own shuffle would hold decoded images); with one, after it.
        shuffled = training and options.shuffle and not options.cache
        dataset = tf.data.Dataset.from_tensor_slices(files)
        if shuffled:
            dataset = dataset.shuffle(len(files), seed=options.seed, reshuffle_each_iteration=True)
            options = dataclasses.replace(options, shuffle=False)
        dataset = dataset.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), self.parallel_reads),
            # Unshuffled: a whole shard per turn, so the examples keep their written order.
            block_length=1 if shuffled else self.shard_size,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if shuffled:
            dataset = dataset.shuffle(
                self.shuffle_buffer, seed=options.seed, reshuffle_each_iteration=True
            )
        decode = stored_images.record_decoder(
            options,
            not options.random_crop(training),
            bool(entry.get("plain_jpegs")),
            self.raw_pixels,
        )
        dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        return options.build(dataset, training=training, split=name)
