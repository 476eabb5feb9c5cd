"""Where the training input's time goes: images/s of each stage of the folder and records
pipelines, beside what Keras' `image_dataset_from_directory` does per image.

`input_pipeline.py` measures three whole pipelines; this script takes the package's
decoders (`decoding.decode_image_bytes`, `decoding.decode_central_crop`) apart, so that the gap between them has causes with
numbers. Data: the 3,000 JPEGs of cats_and_dogs_filtered (train/ and validation/), every file
read once before the rounds (all stages start from the page cache); the records arms read
them from TFRecord shards written once by `kt.data.write_records` (256 images per shard).

Each stage maps its function over the files with `num_parallel_calls=AUTOTUNE`, batches by
32 and runs one epoch; its rate is images over wall seconds, and `cpu_ms_per_image` the
process's CPU time (every `tf.data` thread) over the images: the work a stage costs, whatever
the machine lets run in parallel at that moment. The stages, each adding one step:

- `read`: `tf.io.read_file` only;
- `read_exif`: + the EXIF orientation parse (`exif.read_exif_orientation`);
- `keras_decode`: `tf.io.decode_image` + `tf.image.resize` to 224x224 (squash), float32:
  what `image_dataset_from_directory` maps over its files;
- `decode_crop`: `tf.io.decode_jpeg` + `decoding.resize_and_crop` to the 256 px load size
  (cover, central part, uint8): the package's resize without its checks;
- `decoder_plain`: `decode_image_bytes(exif_orientation=False, scaled_jpeg=False)`;
- `decoder_scaled`: + the JPEG ratio-scaling check (`scaled_jpeg=True`);
- `decoder`: + EXIF orientation: the decoder of randomly cropped training images;
- `central_plain`: `decode_central_crop(exif_orientation=False)`: only the central crop's
  window of the JPEG decoded (`tf.io.decode_and_crop_jpeg`) and resized straight to 224 px;
- `central`: + EXIF orientation: the decoder of validation, test, `predict` and training
  without the random crop;
- `central_plain_jpeg`: `decode_central_crop(plain_jpeg=True)`, what the loaders build when
  `plain_jpegs` finds every file a local JPEG stored upright (recorded in
  `details.plain_jpegs`): no EXIF parse, no branch on the format;
- `folder`: `kt.image_folder_dataset(..., cache=False).train` (no augmentation: `central`);
- `keras`: `keras.utils.image_dataset_from_directory(...)`;
- `records_read`, `records_parse`: the shards read (interleaved), then parsed;
- `records`: `kt.data.records_dataset(..., cache=False).train`.

    python benchmarks/input_stages.py           # about 2 min
    python benchmarks/input_stages.py --smoke   # seconds: a synthetic folder at 32 px

Writes `benchmarks/results/input_stages.json` (kind "timing"); the last line printed is
`{stage: images_per_s}`, the medians over rounds (`cpu_ms_per_image` is in the file).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import input_pipeline  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transfer as kt  # noqa: E402
from keras_transfer.data import decoding  # noqa: E402
from keras_transfer.data import exif  # noqa: E402

AUTOTUNE = tf.data.AUTOTUNE
PAIRING = (
    "every stage's dataset is built once before the rounds; round r runs one epoch of each "
    "stage back to back, the order rotated by r; ratios are taken within a round"
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output", default=None, help="results file")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.rounds = 32, 2
    return args


def file_stages(paths: list[str], args) -> dict:
    """The per-file stages: a function of a path, mapped over every file."""
    size = (args.image_size, args.image_size)
    load = decoding.load_size(size, decoding.DEFAULT_CROP_FRACTION)

    def decoder(path, **options):
        return decoding.decode_image_bytes(tf.io.read_file(path), load, **options)

    functions = {
        "read": lambda p: tf.strings.length(tf.io.read_file(p)),
        "read_exif": lambda p: exif.read_exif_orientation(tf.io.read_file(p)),
        "keras_decode": lambda p: tf.image.resize(
            tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False), size
        ),
        "decode_crop": lambda p: decoding.resize_and_crop(
            tf.io.decode_jpeg(tf.io.read_file(p), channels=3), load
        ),
        "decoder_plain": lambda p: decoder(p, exif_orientation=False, scaled_jpeg=False),
        "decoder_scaled": lambda p: decoder(p, exif_orientation=False),
        "decoder": decoder,
        "central_plain": lambda p: decoding.decode_central_crop(
            tf.io.read_file(p), size, exif_orientation=False
        ),
        "central": lambda p: decoding.decode_central_crop(tf.io.read_file(p), size),
        "central_plain_jpeg": lambda p: decoding.decode_central_crop(
            tf.io.read_file(p), size, plain_jpeg=True
        ),
    }
    files = tf.data.Dataset.from_tensor_slices(paths)
    return {
        name: files.map(function, num_parallel_calls=AUTOTUNE).batch(args.batch_size)
        for name, function in functions.items()
    }


def pipeline_stages(folder: pathlib.Path, shards: pathlib.Path, args) -> dict:
    """The whole pipelines and the records stages."""
    size = (args.image_size, args.image_size)
    common = dict(batch_size=args.batch_size, seed=args.seed, augment=False, cache=False)
    files = sorted(str(p) for p in shards.rglob("*.tfrecord"))
    read = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=16, num_parallel_calls=AUTOTUNE
    )
    # The records' layout (`kt.data.write_records`): the encoded image and its class index.
    features = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }
    parse = read.map(
        lambda s: tf.io.parse_single_example(s, features)["label"],
        num_parallel_calls=AUTOTUNE,
    )
    return {
        "folder": kt.image_folder_dataset(folder, size, validation_split=0.0, **common).train,
        "keras": keras.utils.image_dataset_from_directory(
            folder, image_size=size, batch_size=args.batch_size, shuffle=True, seed=args.seed
        ),
        "records_read": read.batch(args.batch_size),
        "records_parse": parse.batch(args.batch_size),
        "records": kt.data.records_dataset(shards, size, **common).train,
    }


def run_rounds(stages: dict, rounds: int) -> list[dict]:
    names, results = list(stages), []
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        result = {"order": order} | {name: input_pipeline.one_epoch(stages[name]) for name in order}
        rates = {name: result[name]["images"] / result[name]["seconds"] for name in names}
        print(f"round {r}: " + ", ".join(f"{n} {v:.0f}/s" for n, v in rates.items()), flush=True)
        results.append(result)
    return results


def results_arms(rounds: list[dict], names: list[str]) -> dict:
    """images/s per stage, its rate over Keras' pipeline within the round, and the CPU time
    it spent per image (all threads: unlike the rate, not limited by how many cores ran)."""

    def rates(name):
        return [r[name]["images"] / r[name]["seconds"] for r in rounds]

    def cpu_ms(name):
        return [1000 * r[name]["cpu_seconds"] / r[name]["images"] for r in rounds]

    return {
        name: {
            "images_per_second": rates(name),
            "ratio_vs_keras": [a / b for a, b in zip(rates(name), rates("keras"))],
            "cpu_ms_per_image": cpu_ms(name),
        }
        for name in names
    }


def prepare(args, work: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, list[str]]:
    """One folder of class folders (copies of the dataset's files), its shards and
    the file paths; every file read once."""
    if args.smoke:
        source = _common.smoke_image_folder()
    else:
        assets = _common.assets_dir(args.assets, _common.DATASETS["cats_and_dogs"])
        source = assets / _common.DATASETS["cats_and_dogs"]
    folder = work / "images"
    input_pipeline.copy_images(source, folder, copies=1)
    kt.data.write_records(folder, work / "records", 256, validation_split=0.0, seed=args.seed)
    paths = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    input_pipeline.read_all(work)  # every file and shard into the page cache
    if args.smoke:
        shutil.rmtree(source, ignore_errors=True)
    return folder, work / "records", paths


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = _common.start_run(
        {"tuned": "nothing: each stage runs as written, no augmentation, no cache",
         "tuned_on": None, "pairing": PAIRING},
        script=__file__,
        argv=argv,
    )  # fmt: skip
    work = pathlib.Path(tempfile.mkdtemp(prefix="input_stages_"))
    try:
        folder, shards, paths = prepare(args, work)
        plain = kt.data.plain_jpegs(paths)  # while the files exist
        stages = file_stages(paths, args) | pipeline_stages(folder, shards, args)
        rounds = run_rounds(stages, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = _common.write_results(
        _common.results_path(args.output, args.smoke, "input_stages"),
        run,
        kind="timing",
        benchmark="input_stages",
        dataset="synthetic" if args.smoke else "cats_and_dogs",
        splits={"train": len(paths)},
        evaluated_on="train",
        repeats=args.rounds,
        arms=results_arms(rounds, list(stages)),
        primary_metric="images_per_second",
        comparisons=[[name, "keras"] for name in stages if name != "keras"],
        details={
            "rounds": rounds,
            "plain_jpegs": plain,
            "settings": vars(args) | {"assets": None},
        },
    )
    summary = {
        name: round(statistics.median(arm["images_per_second"]["per_seed"]), 1)
        for name, arm in record["arms"].items()
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
