"""Throughput of every phase against plain Keras, and the CPU defaults' measurements.

One process, the same model (MobileNet V1, real ImageNet weights), data (ants-vs-bees) and
batch for every arm, arms interleaved round by round (the order rotates), medians reported:

- `fine_tune_vs_plain_fit`: images/s of our phase 2 (`fit_two_phase` with the command's
  defaults: TensorBoard, the resumable backup and the guards; no EMA and no per-layer
  learning rates, both opt-in) over a hand-written `model.compile(Adam); model.fit` of the
  same unfrozen network (BatchNormalization frozen in both). Steady state: each fit runs
  one warm-up epoch (tracing, first-epoch callbacks) and then `--epochs` timed epochs. Also
  as the median of the per-round ratios (`_paired`), which the load drifting between
  rounds disturbs less. The attribution arms (`--arms`): `ours_no_backup` and
  `ours_no_tensorboard` leave one default out, `ours_bare` both; `ours_with_ema` adds the
  opt-in EMA (`--ema_momentum=0.5`, per epoch, with `SwapEMAWeights`) and
  `ours_with_lr_decay` the per-layer rates of `--lr_decay`.
- `pipeline_vs_model`: images/s of the input pipeline alone (listing done; decode, crop,
  flip augmentation, batch from the image folder), first epoch and cached epochs, over
  the plain fit's training images/s.
- `extract_vs_predict`: `extract_features` over `extractor.predict` of the same network, on
  the unaugmented training images.
- `bf16_vs_fp32_cpu`: plain fit images/s under `mixed_bfloat16` over float32.
- `jit_vs_nojit_cpu`: plain fit images/s with `jit_compile=True` over `False` (steady
  state: the XLA compilation falls in the warm-up epoch; its time is reported apart).
- `large_jpeg_decode`: decode + resize images/s with `decode_jpeg(ratio=2|4|8)` for JPEGs
  at least 2x the target on both sides vs full decoding, and the validation accuracy of a
  linear probe (logistic regression on the frozen backbone's pooled features) trained on
  features of images decoded each way.

`--scale` runs the scale check instead: a synthetic folder of `--scale_images` small JPEGs
(made in /tmp, deleted afterwards), the cached feature pipeline (`extract_features` with
`--scale_memory_mb` so it spills to disk, then one head epoch from the disk cache),
recording images vs seconds and the process RSS along the way.

    python benchmarks/throughput.py                 # long: plain_jit (XLA on CPU) is slow
    python benchmarks/throughput.py --scale         # 50 000 images at 64 px
    python benchmarks/throughput.py --smoke         # seconds: synthetic data, weights=None
    python benchmarks/throughput.py --image_size 224 --rounds 5 --tag attribution \
        --arms ours,plain,plain_bf16,pipeline,ours_no_backup,ours_no_tensorboard,ours_bare,ours_with_ema,ours_with_lr_decay

The last line printed is one JSON object; results go to
benchmarks/results/throughput.json (throughput_<tag>.json, throughput_scale.json), in the
results schema of `_common.write_results` (kind "timing"): each arm's images/s per round
and its per-round ratio to its reference (`plain`, `predict`, full decoding); everything
else the run measured is under `details`. `--smoke` writes no file.
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
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transfer as kt  # noqa: E402
from keras_transfer import data as data_lib  # noqa: E402
from keras_transfer.training import extraction as features  # noqa: E402

LOSS = "sparse_categorical_crossentropy"


class EpochTimer(keras.callbacks.Callback):
    """Times a fit's epochs after the first (warm-up) one, end-of-epoch callbacks included:
    put it last in the callback list."""

    def __init__(self):
        super().__init__()
        self.begins: list[float] = []
        self.end = 0.0
        self.start = time.perf_counter()

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.begins.append(time.perf_counter())

    def on_train_end(self, logs=None):
        self.end = time.perf_counter()

    def steady_seconds(self) -> float:
        return self.end - self.begins[1]

    def warmup_seconds(self) -> float:
        return self.begins[1] - self.start


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values):
    return statistics.median(values)


def build(weights, size, policy="float32", **extra):
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        return kt.create_classifier(
            "mobilenet",
            2,
            head={"dropout": 0.2},
            input_shape=(size, size, 3),
            weights=weights,
            **extra,
        )
    finally:
        keras.config.set_dtype_policy(previous)


# --- fine-tuning arms ----------------------------------------------------------------------


# What each "ours" arm leaves out of (or adds to) the command's phase 2, to attribute its cost.
OURS_VARIANTS = {
    "ours": {},
    "ours_no_backup": {"backup": False},
    "ours_no_tensorboard": {"tensorboard": False},
    "ours_bare": {"backup": False, "tensorboard": False},
    "ours_with_ema": {"ema": True},
    "ours_with_lr_decay": {"lr_decay": True},
}


def ours_fit(model, train, args, work, backup=True, ema=False, lr_decay=False, tensorboard=True):
    """Phase 2 of fit_two_phase with the command's defaults (apps/image_training.py):
    TensorBoard, backup, guards; the keyword arguments turn one of them off, or add the
    opt-in EMA (per-epoch momentum 0.5, `SwapEMAWeights`) or per-layer rates."""
    timer = EpochTimer()
    backup = backup and args.backup
    tensorboard = tensorboard and args.tensorboard
    callbacks = [keras.callbacks.SwapEMAWeights()] if ema else []
    if tensorboard:
        callbacks.insert(0, keras.callbacks.TensorBoard(str(work / "logs")))
    if ema:
        momentum = kt.ema_momentum_per_step(0.5, max(int(train.cardinality()), 1))
        optimizer = lambda lr: keras.optimizers.Adam(lr, use_ema=True, ema_momentum=momentum)  # noqa: E731
    else:
        optimizer = "adam"
    kt.fit_two_phase(
        model,
        train,
        head_epochs=0,
        fine_tune_epochs=1 + args.epochs,
        fine_tune_lr=args.learning_rate,
        unfreeze="all",
        optimizer=optimizer,
        lr_decay=(args.lr_decay or None) if lr_decay else None,
        callbacks=[*callbacks, timer],
        backup_dir=str(work / "backup") if backup else None,
        verbose=0,
    )
    if backup:
        shutil.rmtree(work / "backup", ignore_errors=True)
    return timer


def plain_fit(model, train, args, compile_kwargs=None):
    timer = EpochTimer()
    if compile_kwargs is not None:
        model.compile(
            optimizer=keras.optimizers.Adam(args.learning_rate),
            loss=LOSS,
            metrics=["accuracy"],
            **compile_kwargs,
        )
    model.fit(train, epochs=1 + args.epochs, callbacks=[timer], verbose=0)
    return timer


def _training_data(directory, args):
    """The image folder as every arm reads it: flip+crop training images, seed 0."""
    return kt.image_folder_dataset(
        directory / "train",
        image_size=args.image_size,
        batch_size=args.batch_size,
        validation_dir=directory / "val",
        augment="flip,crop",
        seed=0,
    )


def pipeline_rates(directory, args):
    """Images/s of the training pipeline alone: the first epoch (decode, crop, flip, batch,
    filling the cache) and the next (cached) epochs."""
    data = _training_data(directory, args)
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        count = sum(int(images.shape[0]) for images, _ in data.train)
        rates.append(count / (time.perf_counter() - start))
    return rates[0], median(rates[1:])


# --- large JPEG decoding -----------------------------------------------------------------


def _files(directory):
    paths, labels = [], []
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir())
    for label, name in enumerate(classes):
        for path in sorted((directory / name).iterdir()):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                paths.append(str(path))
                labels.append(label)
    return paths, np.asarray(labels)


def decoded_batches(paths, size, load, scaled, batch_size):
    top = (load - size) // 2

    def load_one(path):
        image = data_lib.decode_and_resize(path, (load, load), scaled_jpeg=scaled)
        return tf.cast(image[top : top + size, top : top + size], tf.float32)

    dataset = tf.data.Dataset.from_tensor_slices(paths)
    return dataset.map(load_one, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)


def jpeg_ratio_applies(paths, load):
    count = 0
    for path in paths:
        size = data_lib.read_image_size(path)
        if size and min(size[0] // load, size[1] // load) >= 2:
            count += 1
    return count


def probe_accuracy(extractor, train, val, size, load, scaled, batch_size):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def feats(paths):
        return np.concatenate(
            [
                np.asarray(extractor.predict_on_batch(batch))
                for batch in decoded_batches(paths, size, load, scaled, batch_size)
            ]
        )

    x_train, x_val = feats(train[0]), feats(val[0])
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(C=0.1, max_iter=3000).fit(scaler.transform(x_train), train[1])
    return float(probe.score(scaler.transform(x_val), val[1]))


def large_jpeg_decode(directory, weights, args, extra):
    size = args.decode_size
    load = data_lib.load_size((size, size), 0.875)[0]
    train, val = _files(directory / "train"), _files(directory / "val")
    paths = train[0] + val[0]
    speeds = {"full": [], "scaled": []}
    for round_index in range(args.rounds):
        order = ("full", "scaled") if round_index % 2 == 0 else ("scaled", "full")
        for arm in order:
            start = time.perf_counter()
            count = sum(
                int(b.shape[0])
                for b in decoded_batches(paths, size, load, arm == "scaled", args.batch_size)
            )
            speeds[arm].append(count / (time.perf_counter() - start))
    extractor = features.feature_extractor(build(weights, size, **extra))
    accuracy = {
        arm: probe_accuracy(extractor, train, val, size, load, arm == "scaled", args.batch_size)
        for arm in ("full", "scaled")
    }
    return {
        "image_size": size,
        "decode_size": load,
        "images": len(paths),
        "images_decoded_at_reduced_scale": jpeg_ratio_applies(paths, load),
        "full_images_per_second": [round(v, 1) for v in speeds["full"]],
        "scaled_images_per_second": [round(v, 1) for v in speeds["scaled"]],
        "speedup": round(median(speeds["scaled"]) / median(speeds["full"]), 3),
        "probe_val_accuracy_full": round(accuracy["full"], 4),
        "probe_val_accuracy_scaled": round(accuracy["scaled"], 4),
    }


# --- the main benchmark ------------------------------------------------------------------


def parse_arms(text: str) -> list[str]:
    arms = [arm.strip() for arm in text.split(",") if arm.strip()]
    known = {"plain", "plain_jit", "plain_bf16", "pipeline", *OURS_VARIANTS}
    if set(arms) - known or "plain" not in arms:
        raise SystemExit(
            f"--arms {text!r}: unknown arms {sorted(set(arms) - known)}, or no 'plain' (the "
            f"reference of every ratio); choose from {sorted(known)}."
        )
    return arms


def run(args) -> dict:
    if args.smoke:
        directory = _common.smoke_image_folder(per_class=16, size=72)
        (directory / "val").mkdir()
        for name in ("ants", "bees"):
            shutil.move(str(directory / "validation" / name), str(directory / "val" / name))
        weights, extra = None, {"alpha": 0.25}
        args.image_size, args.decode_size, args.rounds, args.epochs = 32, 32, 2, 1
    else:
        assets = _common.assets_dir(args.assets, _common.DATASETS["hymenoptera"])
        directory = assets / _common.DATASETS["hymenoptera"]
        weights, extra = str(assets / _common.MOBILENET_WEIGHTS), {}
    work = pathlib.Path(tempfile.mkdtemp(prefix="keras_transfer_throughput_"))
    result: dict = {
        "benchmark": "throughput",
        "dataset": "synthetic" if args.smoke else "hymenoptera",
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "timed_epochs_per_fit": args.epochs,
        "lr_decay": args.lr_decay,
        "load_average_start": _common.load_average(),
    }
    start = time.perf_counter()
    try:
        if "decode" in args.sections:
            result["large_jpeg_decode"] = large_jpeg_decode(directory, weights, args, extra)
            print("large_jpeg_decode", result["large_jpeg_decode"], flush=True)

        data = _training_data(directory, args)
        result["train_images"] = data.num_train
        train = data.train
        for _ in train:  # fill the decoded-image cache before anything is timed
            pass
        images_per_epoch = data.num_train

        arms = parse_arms(args.arms) if "fits" in args.sections else []
        model = build(weights, args.image_size, **extra)
        jit_model = build(weights, args.image_size, **extra) if "plain_jit" in arms else None
        bf16_model = (
            build(weights, args.image_size, policy="mixed_bfloat16", **extra)
            if "plain_bf16" in arms
            else None
        )
        for m in (jit_model, bf16_model):
            if m is not None:
                kt.unfreeze(m, "all")
        if jit_model is not None:
            # Compile once (the XLA compilation of the jit arm happens here, timed apart).
            result["jit_first_fit_warmup_epoch_seconds"] = round(
                plain_fit(jit_model, train, args, {"jit_compile": True}).warmup_seconds(), 1
            )
        if bf16_model is not None:
            plain_fit(bf16_model, train, args, {"jit_compile": False})

        # Extraction vs predict, same extractor, the unaugmented (cached) training images.
        extractor = features.feature_extractor(model)
        extraction_data = data.train_unaugmented
        features.extract_features(extractor, extraction_data, verbose=0)
        extractor.predict(extraction_data, verbose=0)
        rates = {name: [] for name in ("extract", "predict")}
        for round_index in range(args.rounds if "extract" in args.sections else 0):
            for arm in ("extract", "predict")[:: 1 if round_index % 2 == 0 else -1]:
                t = time.perf_counter()
                if arm == "extract":
                    n = features.extract_features(extractor, extraction_data, verbose=0)
                    n = n.num_examples
                else:
                    n = len(extractor.predict(extraction_data, verbose=0))
                rates[arm].append(n / (time.perf_counter() - t))
        print("extract", rates, flush=True)

        timings = {arm: [] for arm in arms}
        warmups = {arm: [] for arm in arms}
        pipeline_cached = []
        for round_index in range(args.rounds if arms else 0):
            order = arms[round_index % len(arms) :] + arms[: round_index % len(arms)]
            for arm in order:
                if arm == "pipeline":
                    first, cached = pipeline_rates(directory, args)
                    timings[arm].append(first)
                    pipeline_cached.append(cached)
                    continue
                if arm in OURS_VARIANTS:
                    timer = ours_fit(model, train, args, work, **OURS_VARIANTS[arm])
                elif arm == "plain":
                    # Same unfrozen set as ours (all blocks, BatchNormalization frozen).
                    kt.unfreeze(model, "all")
                    timer = plain_fit(model, train, args, {})
                elif arm == "plain_jit":
                    timer = plain_fit(jit_model, train, args)
                else:
                    timer = plain_fit(bf16_model, train, args)
                timings[arm].append(images_per_epoch * args.epochs / timer.steady_seconds())
                warmups[arm].append(timer.warmup_seconds())
                print(round_index, arm, round(timings[arm][-1], 2), "img/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.smoke:
            shutil.rmtree(directory, ignore_errors=True)

    med = {arm: median(v) for arm, v in timings.items()}

    def over_plain(arm):
        return round(med[arm] / med["plain"], 3) if arm in med and "plain" in med else None

    def paired_over_plain(arm):
        # Same round, back to back: less exposed to the load drifting between rounds.
        if arm not in timings or "plain" not in timings:
            return None
        return round(median([a / b for a, b in zip(timings[arm], timings["plain"])]), 3)

    result.update(
        {
            "arms": arms,
            "fine_tune_vs_plain_fit": over_plain("ours"),
            "fine_tune_vs_plain_fit_paired": paired_over_plain("ours"),
            "variants_vs_plain_fit": {
                arm: {"medians": over_plain(arm), "paired": paired_over_plain(arm)}
                for arm in OURS_VARIANTS
                if arm in med
            },
            "pipeline_vs_model": over_plain("pipeline"),
            "pipeline_cached_vs_model": (
                round(median(pipeline_cached) / med["plain"], 3)
                if pipeline_cached and "plain" in med
                else None
            ),
            "extract_vs_predict": (
                round(median(rates["extract"]) / median(rates["predict"]), 3)
                if rates["extract"]
                else None
            ),
            "extract_vs_predict_paired": (
                round(median([a / b for a, b in zip(rates["extract"], rates["predict"])]), 3)
                if rates["extract"]
                else None
            ),
            "bf16_vs_fp32_cpu": over_plain("plain_bf16"),
            "jit_vs_nojit_cpu": over_plain("plain_jit"),
            "images_per_second": {
                arm: [round(v, 2) for v in vals] for arm, vals in timings.items()
            },
            "pipeline_cached_images_per_second": [round(v, 1) for v in pipeline_cached],
            "extract_images_per_second": [round(v, 1) for v in rates["extract"]],
            "predict_images_per_second": [round(v, 1) for v in rates["predict"]],
            "warmup_epoch_seconds": {
                arm: [round(v, 2) for v in vals] for arm, vals in warmups.items() if vals
            },
            "seconds": round(time.perf_counter() - start, 1),
            "load_average_end": _common.load_average(),
        }
    )
    return result


# --- the scale run -----------------------------------------------------------------------


class RecordingIterable:
    """Yields a dataset's batches, recording (images so far, seconds, RSS) every `every`
    batches."""

    def __init__(self, dataset, every: int):
        self.dataset = dataset
        self.every = every
        self.curve: list[dict] = []

    def __iter__(self):
        start = time.perf_counter()
        seen = 0
        for index, batch in enumerate(self.dataset):
            seen += int(batch[0].shape[0])
            if index % self.every == 0:
                self.curve.append(
                    {
                        "images": seen,
                        "seconds": round(time.perf_counter() - start, 2),
                        "rss_mb": round(rss_mb(), 1),
                    }
                )
            yield batch
        self.curve.append(
            {
                "images": seen,
                "seconds": round(time.perf_counter() - start, 2),
                "rss_mb": round(rss_mb(), 1),
            }
        )


def make_synthetic_folder(root: pathlib.Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (64, size, size, 3), dtype=np.uint8)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
    encoded = [tf.io.encode_jpeg(image, quality=85).numpy() for image in base]
    for i in range(count):
        # Any content does: 64 distinct JPEGs (small random noise makes them differ).
        (root / ("a" if i % 2 else "b") / f"{i:06d}.jpg").write_bytes(encoded[i % len(encoded)])


def run_scale(args) -> dict:
    weights = None
    extra = {"alpha": 0.25} if args.smoke else {}
    if not args.smoke:
        assets = _common.assets_dir(args.assets, _common.MOBILENET_WEIGHTS)
        weights = str(assets / _common.MOBILENET_WEIGHTS)
    count = 2_000 if args.smoke else args.scale_images
    root = pathlib.Path(tempfile.mkdtemp(prefix="keras_transfer_scale_"))
    result = {
        "benchmark": "throughput_scale",
        "images": count,
        "image_size": args.scale_size,
        "batch_size": args.scale_batch_size,
        "max_memory_bytes": args.scale_memory_mb * 2**20,
        "load_average_start": _common.load_average(),
    }
    try:
        start = time.perf_counter()
        make_synthetic_folder(root / "images", count, args.scale_size + 16)
        result["generate_seconds"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        data = kt.image_folder_dataset(
            root / "images",
            image_size=args.scale_size,
            batch_size=args.scale_batch_size,
            validation_split=0.0,
            cache=False,  # 50 000 decoded images would not be a fair memory test
            shuffle=False,
        )
        result["listing_seconds"] = round(time.perf_counter() - start, 1)
        model = build(weights, args.scale_size, **extra)
        extractor = features.feature_extractor(model)
        recording = RecordingIterable(data.train_unaugmented, every=max(1, 2000 // 128))
        cached = features.extract_features(
            extractor,
            recording,
            cache_dir=root / "cache",
            max_memory_bytes=args.scale_memory_mb * 2**20,
            verbose=0,
        )
        curve = recording.curve
        print("extracted", count, "images in", round(cached.seconds, 1), "s", flush=True)
        spill_at = args.scale_memory_mb * 2**20 // (cached.features.shape[1] * 4)
        # Images/s in each tenth of the run: flat means no slowdown as the cache spills.
        tenths = []
        for i in range(1, 11):
            lo = next(p for p in curve if p["images"] >= count * (i - 1) / 10)
            hi = next(p for p in curve if p["images"] >= count * i / 10)
            if hi["seconds"] > lo["seconds"]:
                tenths.append(
                    round((hi["images"] - lo["images"]) / (hi["seconds"] - lo["seconds"]))
                )
        head_inputs = keras.Input(cached.features.shape[1:])
        head = keras.Model(head_inputs, keras.layers.Dense(2, activation="softmax")(head_inputs))
        head.compile(optimizer="adam", loss=LOSS)
        epoch_start = time.perf_counter()
        head.fit(cached.as_dataset(128, shuffle=True, seed=0), epochs=1, verbose=0)
        result.update(
            {
                "on_disk": cached.on_disk,
                "spilled_after_images": int(spill_at),
                "extract_seconds": round(cached.seconds, 1),
                "extract_images_per_second": round(count / cached.seconds, 1),
                "images_per_second_by_tenth": tenths,
                "flatness_min_over_max_tenth": round(min(tenths) / max(tenths), 3),
                "head_epoch_from_disk_seconds": round(time.perf_counter() - epoch_start, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "curve": curve,
                "load_average_end": _common.load_average(),
            }
        )
        del cached
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["temporary_folder_deleted"] = not root.exists()
    return result


PAIRING = (
    "round r runs the fit arms back to back on the same model and data, the order rotated by "
    "r; extract and predict (and full and scaled decoding) alternate their order each round; "
    "a ratio is taken within a round"
)


def _ratios(values: list, reference: list) -> list:
    return [a / b for a, b in zip(values, reference, strict=True)]


def results_arms(result: dict) -> tuple[dict, list]:
    """`({arm: {metric: [one value per round]}}, comparisons)` from `run`'s result: each fit
    arm's images/s and its ratio to `plain` in the same round, the pipeline's cached epochs,
    `extract` over `predict`, and scaled over full JPEG decoding."""
    arms, comparisons = {}, []
    rates = {arm: v for arm, v in result.get("images_per_second", {}).items() if v}
    plain = rates.get("plain")
    for arm, values in rates.items():
        arms[arm] = {"images_per_second": values}
        if arm != "plain" and plain:
            arms[arm]["ratio_vs_plain"] = _ratios(values, plain)
            comparisons.append([arm, "plain"])
    cached = result.get("pipeline_cached_images_per_second") or []
    if cached and "pipeline" in arms:
        arms["pipeline"]["cached_images_per_second"] = cached
        if plain:
            arms["pipeline"]["cached_ratio_vs_plain"] = _ratios(cached, plain)
    extract, predict = (
        result.get("extract_images_per_second"),
        result.get("predict_images_per_second"),
    )
    if extract:
        arms["predict"] = {"images_per_second": predict}
        arms["extract"] = {
            "images_per_second": extract,
            "ratio_vs_predict": _ratios(extract, predict),
        }
        comparisons.append(["extract", "predict"])
    decode = result.get("large_jpeg_decode")
    if decode:
        full, scaled = decode["full_images_per_second"], decode["scaled_images_per_second"]
        arms["decode_full"] = {"images_per_second": full}
        arms["decode_scaled"] = {
            "images_per_second": scaled,
            "ratio_vs_full": _ratios(scaled, full),
        }
        comparisons.append(["decode_scaled", "decode_full"])
    return arms, comparisons


def scale_arms(result: dict) -> dict:
    """The scale run as one repeat: extraction to the disk cache, then a head epoch on it."""
    return {
        "extract_to_disk": {
            "seconds": [result["extract_seconds"]],
            "images_per_second": [result["extract_images_per_second"]],
            "peak_rss_mb": [result["peak_rss_mb"]],
        },
        "head_epoch_from_disk": {"seconds": [result["head_epoch_from_disk_seconds"]]},
    }


def write(path: pathlib.Path, run_record, args, result: dict) -> dict:
    """The results file of a main or `--scale` run (`_common.write_results`)."""
    if args.scale:
        arms, comparisons, repeats = scale_arms(result), [], 1
        splits, dataset = {"train": result["images"]}, "synthetic"
    else:
        (arms, comparisons), repeats = results_arms(result), args.rounds
        splits, dataset = {"train": result.get("train_images", 0)}, result["dataset"]
    return _common.write_results(
        path,
        run_record,
        kind="timing",
        benchmark="throughput",
        dataset=dataset,
        splits=splits,
        evaluated_on="train",
        repeats=repeats,
        arms=arms,
        primary_metric="seconds" if args.scale else "images_per_second",
        comparisons=comparisons,
        details=result,
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--decode_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per fit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--learning_rate", type=float, default=2e-5)
    parser.add_argument("--lr_decay", type=float, default=0.8, help="0: no per-layer LR")
    parser.add_argument("--no_backup", dest="backup", action="store_false")
    parser.add_argument("--no_tensorboard", dest="tensorboard", action="store_false")
    parser.add_argument(
        "--arms",
        default="ours,plain,plain_jit,plain_bf16,pipeline",
        help="comma-separated fit arms, from: plain, plain_jit, plain_bf16, pipeline, "
        + ", ".join(OURS_VARIANTS)
        + " (ours_no_X leaves X out of ours, ours_bare both; ours_with_X adds the opt-in X)",
    )
    parser.add_argument(
        "--sections",
        default="decode,extract,fits",
        help="comma-separated parts to run: decode (large_jpeg_decode), extract "
        "(extract_vs_predict), fits (the --arms)",
    )
    parser.add_argument("--tag", default="", help="results file throughput_<tag>.json")
    parser.add_argument("--scale", action="store_true")
    parser.add_argument("--scale_images", type=int, default=50_000)
    parser.add_argument("--scale_size", type=int, default=64)
    parser.add_argument("--scale_batch_size", type=int, default=128)
    parser.add_argument("--scale_memory_mb", type=int, default=16)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    selection = {
        "tuned": "nothing: model, data, batch, rounds and arms are fixed flags",
        "tuned_on": None,
        "pairing": PAIRING if not args.scale else "one run (the scale check has no arms to pair)",
    }
    run_record = _common.start_run(selection, script=__file__, argv=argv)
    out = _common.output_dir(args.output_dir, "")
    parse_arms(args.arms)
    args.sections = {part.strip() for part in args.sections.split(",") if part.strip()}
    if args.sections - {"decode", "extract", "fits"}:
        raise SystemExit(f"--sections: choose from decode, extract, fits; got {args.sections}.")
    if args.scale:
        result = run_scale(args)
        name = "throughput_scale.json"
    else:
        result = run(args)
        name = f"throughput_{args.tag}.json" if args.tag else "throughput.json"
    result["command"] = "python benchmarks/throughput.py " + " ".join(argv or sys.argv[1:])
    if not args.smoke:
        write(out / name, run_record, args, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
