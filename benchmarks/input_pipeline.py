"""Input pipeline throughput: images/s of the training input from a folder of JPEG files, from
TFRecord shards of the same files, and from Keras' `image_dataset_from_directory`.

Data: the 3,000 JPEGs of cats_and_dogs_filtered (its train/ and validation/ together),
copied `--copies` times (default 7: 21,000 images) into one temporary folder of two class
folders, deleted afterwards. Copies, not symbolic links: the package's listing uses each
real file once, so links to one file would be left out as duplicates. The records are
written from that folder once (`kt.data.write_records`, 1024 images per shard, every image
in the training split); the writing time is reported apart, not in the rates.

Each arm is one epoch of training input at `--image_size` (224) px: shuffled, decoded,
resized, batched by 32, float32, with neither augmentation nor a cache of decoded images
(`image_dataset_from_directory` has neither):

- `folder`: `kt.image_folder_dataset(folder, validation_split=0, cache=False).train`
  (resized to cover 256 px, central 224 px crop);
- `records`: `kt.data.records_dataset(records, cache=False).train`, the same decoder;
- `records_smaller`: the same, from records written with `shorter_side=256` (the load size
  of 224 px): each image stored upright at the size training resizes it to, re-encoded as
  a JPEG of quality 95 (`kt.data.stored_images`);
- `records_raw`: the same, from records written with `shorter_side=256, raw_pixels=True`:
  the resized images stored as their decoded pixels, so reading decodes nothing (about seven
  times the disk of `records_smaller`; `details.data.bytes`);
- `keras`: `keras.utils.image_dataset_from_directory(folder, shuffle=True)` (the whole image
  stretched to 224x224).

Every pipeline is built once, before the rounds (the folder loader's listing and checks,
Keras' listing: their seconds are in `details.setup_seconds`), and every file and shard is
read once so that all arms start from the page cache. Each round then runs one epoch of
every arm, back to back, the order rotated from round to round; an arm's rate is its
images over its epoch's seconds, first batch included. All arms run in one process, so
`peak_rss_mb` is the process's peak resident memory over the whole run (each arm's RSS after
its epoch is in the rounds' details). Each arm also reports `cpu_ms_per_image`: the
process's CPU time over the epoch's images (on this 2-core machine wall-clock rates fall on
a few levels, so CPU time is the steadier measure of the work). Goals (issue 32): records at
least 1.5x the images/s of `folder`, and `folder` at least those of `keras`.

    python benchmarks/input_pipeline.py            # the real data: about 10 min
    python benchmarks/input_pipeline.py --smoke    # seconds: a synthetic folder at 32 px

Duration, estimated (the full run has not been run yet): the smoke run (64 synthetic 40x48
JPEGs at 32 px, 2 rounds) takes about 6 s on the 2-core development machine, its rates
bound by per-epoch overheads, not decoding. Scaled: the same decoder on 400 of the
dataset's photos (about 400x360) at 256 px read about 575 images/s there, so one epoch of
an arm over 21,000 images takes 35-60 s, and 3 rounds of 3 arms 5-9 min, plus about 2 min
of set-up (copying 0.5 GB, two listings that decode every file once to check it, writing
the records): about 10 min in all.

Writes `benchmarks/results/input_pipeline.json` through `_common.write_results` (kind
"timing"). The last line printed is one JSON object: `{folder_images_per_s,
records_images_per_s, records_smaller_images_per_s, records_raw_images_per_s,
keras_images_per_s, peak_rss_mb}`, the
rates the medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import keras  # noqa: E402

import keras_transfer as kt  # noqa: E402

ARMS = ("folder", "records", "records_smaller", "records_raw", "keras")
STORED = {"records_smaller": {}, "records_raw": {"raw_pixels": True}}
PAIRING = (
    "every pipeline is built once before the rounds; round r runs one epoch of each arm back "
    "to back, the arms' order rotated by r; ratios are taken within a round"
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output", default=None, help="results file")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--copies", type=int, default=7, help="copies of each image")
    parser.add_argument("--shard_size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.copies, args.rounds = 32, 2, 2
        args.shard_size = min(args.shard_size, 16)
    return args


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def copy_images(source: pathlib.Path, target: pathlib.Path, copies: int) -> int:
    """Copies every image of `source`'s split folders (`train/cats`, `validation/cats`...)
    `copies` times into `target/<class>/`; returns how many files were written."""
    written = 0
    for split in sorted(p for p in source.iterdir() if p.is_dir()):
        for class_dir in sorted(p for p in split.iterdir() if p.is_dir()):
            folder = target / class_dir.name
            folder.mkdir(parents=True, exist_ok=True)
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() not in _common.SUBSET_EXTENSIONS:
                    continue
                for copy in range(copies):
                    shutil.copyfile(path, folder / f"{copy}_{split.name}_{path.name}")
                    written += 1
    return written


def read_all(folder: pathlib.Path) -> int:
    """Reads every file under `folder` once (into the page cache); returns the bytes."""
    return sum(len(path.read_bytes()) for path in folder.rglob("*") if path.is_file())


def build_pipelines(images: pathlib.Path, records: pathlib.Path, args) -> tuple[dict, dict]:
    """The three arms' training datasets, and the seconds each took to build."""
    size = (args.image_size, args.image_size)
    common = dict(batch_size=args.batch_size, seed=args.seed, augment=False, cache=False)
    builders = {
        "folder": lambda: (
            kt.image_folder_dataset(images, size, validation_split=0.0, **common).train
        ),
        "records": lambda: kt.data.records_dataset(records, size, **common).train,
        **{
            arm: lambda arm=arm: (
                kt.data.records_dataset(records.with_name(arm), size, **common).train
            )
            for arm in STORED
        },
        "keras": lambda: keras.utils.image_dataset_from_directory(
            images, image_size=size, batch_size=args.batch_size, shuffle=True, seed=args.seed
        ),
    }
    pipelines, seconds = {}, {}
    for arm, build in builders.items():
        start = time.perf_counter()
        pipelines[arm] = build()
        seconds[arm] = round(time.perf_counter() - start, 2)
    return pipelines, seconds


def one_epoch(dataset) -> dict:
    """Images, wall seconds and the process's CPU seconds (every `tf.data` thread runs in
    it) over one epoch, and the resident memory after it. A batch is `(images, labels)` or
    one tensor."""
    start, cpu_start = time.perf_counter(), time.process_time()
    count = sum(int((b[0] if isinstance(b, tuple) else b).shape[0]) for b in dataset)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"images": count, "seconds": seconds, "cpu_seconds": cpu, "rss_mb": round(rss_mb(), 1)}


def run_rounds(pipelines: dict, args) -> list[dict]:
    rounds = []
    for r in range(args.rounds):
        order = list(ARMS[r % len(ARMS) :] + ARMS[: r % len(ARMS)])
        result = {"order": order}
        for arm in order:
            result[arm] = one_epoch(pipelines[arm])
        rates = {arm: result[arm]["images"] / result[arm]["seconds"] for arm in ARMS}
        print(
            f"round {r}: "
            + ", ".join(f"{arm} {rates[arm]:.0f} images/s" for arm in order)
            + f"; load {_common.load_average()}",
            flush=True,
        )
        rounds.append(result)
    return rounds


def results_arms(rounds: list[dict]) -> dict:
    """`{arm: {metric: [one value per round]}}` for `_common.write_results`: images/s and
    seconds, and the goals' ratios within each round."""

    def rates(arm):
        return [r[arm]["images"] / r[arm]["seconds"] for r in rounds]

    arms = {
        arm: {
            "images_per_second": rates(arm),
            "seconds": [r[arm]["seconds"] for r in rounds],
            "cpu_ms_per_image": [1000 * r[arm]["cpu_seconds"] / r[arm]["images"] for r in rounds],
        }
        for arm in ARMS
    }
    for arm in ("records", *STORED):
        arms[arm]["ratio_vs_folder"] = [a / b for a, b in zip(rates(arm), rates("folder"))]
    arms["folder"]["ratio_vs_keras"] = [a / b for a, b in zip(rates("folder"), rates("keras"))]
    return arms


def prepare(args, work: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, dict]:
    """The copied image folder, its records and what making them took."""
    if args.smoke:
        source = _common.smoke_image_folder()
    else:
        assets = _common.assets_dir(args.assets, _common.DATASETS["cats_and_dogs"])
        source = assets / _common.DATASETS["cats_and_dogs"]
    images, records = work / "images", work / "records"
    start = time.perf_counter()
    count = copy_images(source, images, args.copies)
    copy_seconds = time.perf_counter() - start
    start = time.perf_counter()
    kt.data.write_records(images, records, args.shard_size, validation_split=0.0, seed=args.seed)
    write_seconds = time.perf_counter() - start
    # The same images stored at the load size training resizes them to (256 px for 224), as
    # JPEGs and as pixels.
    shorter_side, write_stored_seconds = max(_load_size(args)), {}
    for arm, stored in STORED.items():
        start = time.perf_counter()
        kt.data.write_records(images, work / arm, args.shard_size, validation_split=0.0,
                              seed=args.seed, shorter_side=shorter_side, **stored)  # fmt: skip
        write_stored_seconds[arm] = round(time.perf_counter() - start, 2)
    cached = {"images": read_all(images), "records": read_all(records)}
    cached.update({arm: read_all(work / arm) for arm in STORED})
    if args.smoke:
        shutil.rmtree(source, ignore_errors=True)
    facts = {
        "images": count,
        "copy_seconds": round(copy_seconds, 2),
        "write_records_seconds": round(write_seconds, 2),
        **{f"write_{arm}_seconds": seconds for arm, seconds in write_stored_seconds.items()},
        "records_smaller_shorter_side": shorter_side,
        "bytes": cached,
    }
    return images, records, facts


def _load_size(args) -> tuple[int, int]:
    size = (args.image_size, args.image_size)
    return kt.data.load_size(size, kt.data.DEFAULT_CROP_FRACTION)


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = _common.start_run(
        {
            "tuned": "nothing: each pipeline runs with its defaults except no augmentation and "
            "no cache of decoded images (which image_dataset_from_directory lacks)",
            "tuned_on": None,
            "pairing": PAIRING,
        },
        script=__file__,
        argv=argv,
    )
    work = pathlib.Path(tempfile.mkdtemp(prefix="input_pipeline_"))
    try:
        images, records, facts = prepare(args, work)
        pipelines, setup_seconds = build_pipelines(images, records, args)
        rounds = run_rounds(pipelines, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peak = peak_rss_mb()
    record = _common.write_results(
        _common.results_path(args.output, args.smoke, "input_pipeline"),
        run,
        kind="timing",
        benchmark="input_pipeline",
        dataset="synthetic" if args.smoke else "cats_and_dogs",
        splits={"train": facts["images"]},
        evaluated_on="train",
        repeats=args.rounds,
        arms=results_arms(rounds),
        primary_metric="images_per_second",
        comparisons=[*([arm, "folder"] for arm in ("records", *STORED)), ["folder", "keras"]],
        details={
            "rounds": rounds,
            "setup_seconds": setup_seconds,
            "peak_rss_mb": round(peak, 1),
            "data": facts,
            "settings": vars(args) | {"assets": None},
        },
    )
    summary = {
        f"{arm}_images_per_s": statistics.median(
            record["arms"][arm]["images_per_second"]["per_seed"]
        )
        for arm in ARMS
    }
    summary["peak_rss_mb"] = round(peak, 1)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
