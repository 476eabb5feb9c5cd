"""Serving exports of a trained classifier: file size, single-image latency, test accuracy
and top-1 agreement with the float Keras model, per export format.

Per seed (`--seeds`, default 0,1,2), in one process:

1. **Train** the float Keras model as `keras-transfer train`'s head phase does with its
   fixed-plan defaults (`image_config.FIXED_DEFAULTS`: 20 head epochs at learning rate 1e-3,
   dropout 0.2, on backbone features cached once from the unaugmented training images; the
   advisor's early stopping on the validation loss in place of the fixed plan's last epoch) on
   MobileNet V1 (alpha 1.0, 224 px) with the real ImageNet weights (`--assets`, else
   `$KERAS_TRANSFER_ASSETS`, else `../shared/assets`); the backbone stays frozen and the
   head's epoch with the lowest validation loss is kept (`kt.ValidatedEarlyStopping`).
   Fine-tuning is left out: it would multiply the run time, and what quantization changes
   is the exported network, the same MobileNet either way.
2. **Export** the whole model (backbone and head, raw 0-255 images in) through the
   package's export (`export.export_one`, one SavedModel per seed for the TFLite
   conversions): `tflite_float32`, `tflite_dynamic` (int8 weights), `tflite_float16`,
   `tflite_int8` (int8 weights and activations, calibrated on `--representative_images`
   images of this seed's training split chosen at random with the seed) and `onnx`
   (tf2onnx). `bytes` is each file's size.
3. **Test**, once per seed, after training and exports: each format's predictions on every
   test image (TFLite's interpreter, ONNX Runtime) and the Keras model's: `accuracy`, and
   `agreement_with_keras`, the share of test images whose top-1 class equals the Keras
   model's.
4. **Latency**: `export_latency.measure_latency` on each file (what `keras-transfer export
   --measure_latency` records): one test image, `--threads` CPU threads (default 1) in the
   TFLite interpreter or ONNX Runtime, the median of `--latency_runs` runs after
   `--latency_warmup` warm-up runs; the formats are timed back to back, their order rotated
   by one per seed.

Splits: the dataset's own held-out folder (`val/`, `validation/`) is the test split
(`split_scheme="fixed"`); validation is 20% of each class of `train/` (a stable hash of
the seed and the path), and only chooses the head's epoch. Cats vs dogs uses
`--train_per_class 500` of its 1000 training images per class by default (a stable hash
order) to fit 2 CPU cores.

The goals of issue 31, computed from the means over seeds and written to the results
file's `details.goals`, each a boolean with its numbers: int8 TFLite at most 1 point of
test accuracy below the float Keras model; its file at least 3.5x smaller than the float32
TFLite file; at least 1.5x faster per image than float32 TFLite (the mean of the per-seed
latency ratios).

Durations on 2 CPU cores, alone on the machine, as the verdict runs took (their results
files' `seconds`):

    python benchmarks/deploy.py --dataset hymenoptera     # about 5 min (278 s)
    python benchmarks/deploy.py --dataset cats_and_dogs   # about 5 min (292 s)
    python benchmarks/deploy.py --smoke                   # about a minute: synthetic
                                                          # images, a tiny random MobileNet

Writes `benchmarks/results/deploy_<dataset>.json` through `_common.write_results` (kind
"accuracy", arms `keras_float` and one per format, per-seed values with mean and 95%
confidence half-width; per-seed details, the goals and the latency settings in `details`).
The last line printed is `{"formats": {name: {"bytes", "latency_ms_median", "accuracy",
"agreement_with_keras"}}, "float_accuracy"}` (means over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common  # noqa: E402
import numpy as np  # noqa: E402

# name -> (export format, quantize mode)
FORMATS = {
    "tflite_float32": ("tflite", None),
    "tflite_dynamic": ("tflite", "dynamic"),
    "tflite_float16": ("tflite", "float16"),
    "tflite_int8": ("tflite", "int8"),
    "onnx": ("onnx", None),
}
METRICS = ("accuracy", "agreement_with_keras", "bytes", "latency_ms_median")
VALIDATION_SPLIT = 0.2
TRAIN_PER_CLASS = {"hymenoptera": 0, "cats_and_dogs": 500}
# The goals of the issue.
MAX_ACCURACY_DROP = 0.01
MIN_SIZE_RATIO = 3.5
MIN_SPEEDUP = 1.5


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(_common.DATASETS), default="hymenoptera")
    parser.add_argument("--assets", help="the shared assets folder (default ../shared/assets)")
    parser.add_argument("--output", help="results JSON path")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="latency: CPU threads")
    parser.add_argument("--latency_runs", type=int, default=50, help="timed runs per file")
    parser.add_argument("--latency_warmup", type=int, default=5, help="untimed runs first")
    parser.add_argument("--representative_images", type=int, default=200)
    parser.add_argument("--train_per_class", type=int, default=None, help="0 for all")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--smoke", action="store_true", help="seconds: tiny synthetic run")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.train_per_class is None:
        args.train_per_class = TRAIN_PER_CLASS[args.dataset]
    if args.smoke:
        args.seeds, args.image_size = args.seeds[:1], 32
        args.latency_runs, args.latency_warmup = 3, 1
    return args


def _head_settings(smoke: bool) -> dict:
    """The command's head phase with its fixed-plan defaults (2 epochs in a smoke run)."""
    from keras_transfer.apps import image_config

    fixed = image_config.FIXED_DEFAULTS
    return {
        "epochs": 2 if smoke else fixed["head_epochs"],
        "learning_rate": fixed["head_lr"],
        "dropout": image_config.Config.dropout,
    }


def _data(args, seed: int):
    """`(ImageData with a test split, the weights file or None)` of one seed."""
    import keras_transfer as kt

    if args.smoke:
        root, weights = _common.smoke_image_folder(per_class=8), None
        train, test = root / "train", root / "validation"
    else:
        assets = _common.assets_dir(args.assets, _common.MOBILENET_WEIGHTS)
        root, weights = (
            assets / _common.DATASETS[args.dataset],
            str(assets / _common.MOBILENET_WEIGHTS),
        )
        train, test = root / "train", _common.held_out_folder(root)
        if args.train_per_class:
            train = _common.image_subset(train, args.train_per_class, "deploy_train_")
    data = kt.image_folder_dataset(
        train,
        image_size=args.image_size,
        batch_size=32,
        validation_split=VALIDATION_SPLIT,
        test_dir=test,
        augment=False,
        seed=seed,
    )
    return data, weights


def _arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for batch_images, batch_labels in dataset:
        images.append(np.asarray(batch_images, dtype="float32"))
        batch_labels = np.asarray(batch_labels)
        labels.append(batch_labels.argmax(-1) if batch_labels.ndim > 1 else batch_labels)
    return np.concatenate(images), np.concatenate(labels).astype("int64")


def train_float_model(args, data, weights, seed: int) -> tuple:
    """The float Keras model of one seed and the 1-based head epoch kept."""
    import keras

    import keras_transfer as kt

    keras.utils.set_random_seed(seed)
    head = _head_settings(args.smoke)
    backbone = kt.create_backbone(
        "mobilenet",
        input_shape=(args.image_size, args.image_size, 3),
        weights=weights,
        **({"alpha": 0.25} if args.smoke else {}),
    )
    # patience = every epoch: nothing stops early, the lowest validation loss is kept.
    stop = kt.ValidatedEarlyStopping(
        monitor="val_loss", patience=head["epochs"], restore_best_weights=True
    )
    extraction = kt.fit_feature_extractor(
        backbone,
        data.train_unaugmented,
        data.validation,
        num_classes=len(data.class_names),
        class_names=data.class_names,
        head={"dropout": head["dropout"]},
        epochs=head["epochs"],
        learning_rate=head["learning_rate"],
        seed=seed,
        callbacks=[stop],
        verbose=0,
    )
    return extraction.model, int(stop.best_epoch) + 1


def export_formats(model, representative, work: str) -> dict[str, dict]:
    """Writes every format into `work`: `{name: {"path", "bytes"}}`."""
    from keras_transfer.apps import export as export_lib
    from keras_transfer.apps import quantization

    model.predict(representative[:1], verbose=0)  # Keras' ONNX export needs a called model
    saved_model_dir = os.path.join(work, "saved_model")
    plain, _ = quantization.plain_model(model)
    plain.export(saved_model_dir, format="tf_saved_model", verbose=False)
    written = {}
    for name, (export_format, mode) in FORMATS.items():
        path = os.path.join(work, export_lib.output_name(export_format, mode))
        report = export_lib.export_one(
            model,
            path,
            export_format,
            mode,
            representative_data=representative if mode == "int8" else None,
            saved_model_dir=saved_model_dir if export_format == "tflite" else None,
        )
        written[name] = {"path": path, "bytes": int(report["bytes"])}
    return written


def _predict(path: str, images: np.ndarray) -> np.ndarray:
    from keras_transfer.apps import export_check

    if path.endswith(".onnx"):
        return export_check.predict_onnx(path, images)
    with open(path, "rb") as f:
        return export_check.predict_tflite(f.read(), images)


def run_seed(args, seed: int) -> dict:
    """Train, export, test and time one seed; its record."""
    from keras_transfer.apps import export_check
    from keras_transfer.apps import export_latency

    start = time.perf_counter()
    data, weights = _data(args, seed)
    model, kept_epoch = train_float_model(args, data, weights, seed)
    trained = time.perf_counter()
    train_images, _ = _arrays(data.train_unaugmented)
    rng = np.random.default_rng(seed)
    count = min(args.representative_images, len(train_images))
    representative = train_images[np.sort(rng.choice(len(train_images), count, replace=False))]
    del train_images
    record = {
        "seed": seed,
        "splits": {
            "train": data.num_train,
            "validation": data.num_validation,
            "test": data.num_test,
        },
        "kept_head_epoch": kept_epoch,
        "representative_images": count,
        "formats": {},
    }
    with tempfile.TemporaryDirectory(prefix="deploy_") as work:
        written = export_formats(model, representative, work)
        exported = time.perf_counter()
        # The test split, read once per seed, after every choice.
        test_images, test_labels = _arrays(data.test)
        reference = np.asarray(model.predict(test_images, batch_size=32, verbose=0))
        record["float_accuracy"] = float(np.mean(reference.argmax(-1) == test_labels))
        for name, file in written.items():
            result = export_check.compare(
                reference, _predict(file["path"], test_images), test_labels
            )
            record["formats"][name] = {
                "bytes": file["bytes"],
                "accuracy": result["export_accuracy"],
                "agreement_with_keras": result["top1_agreement"],
                "max_probability_difference": result["max_probability_difference"],
            }
        tested = time.perf_counter()
        names = list(written)
        shift = seed % len(names)
        for name in names[shift:] + names[:shift]:
            latency = export_latency.measure_latency(
                written[name]["path"],
                test_images[0],
                threads=args.threads,
                runs=args.latency_runs,
                warmup=args.latency_warmup,
            )
            record["formats"][name]["latency_ms_median"] = latency.pop("latency_ms_median")
            record["formats"][name]["latency"] = latency
        record["latency_order"] = names[shift:] + names[:shift]
    record["seconds"] = {
        "train": round(trained - start, 1),
        "export": round(exported - trained, 1),
        "test": round(tested - exported, 1),
        "latency": round(time.perf_counter() - tested, 1),
    }
    print(f"seed {seed}: {json.dumps(record)}", flush=True)
    return record


def goals(arms: dict) -> dict:
    """The issue's three goals for int8 TFLite, each `passed` with its numbers."""
    mean = statistics.fmean
    float_accuracy = mean(arms["keras_float"]["accuracy"])
    int8, float32 = arms["tflite_int8"], arms["tflite_float32"]
    int8_accuracy = mean(int8["accuracy"])
    size_ratio = mean(float32["bytes"]) / mean(int8["bytes"])
    speedups = [f / i for f, i in zip(float32["latency_ms_median"], int8["latency_ms_median"])]
    return {
        "int8_accuracy_within_1_point_of_float_keras": {
            "passed": float_accuracy - int8_accuracy <= MAX_ACCURACY_DROP,
            "float_keras_accuracy": float_accuracy,
            "int8_accuracy": int8_accuracy,
            "drop_points": 100 * (float_accuracy - int8_accuracy),
            "max_drop_points": 100 * MAX_ACCURACY_DROP,
        },
        "int8_at_least_3_5x_smaller_than_float32_tflite": {
            "passed": size_ratio >= MIN_SIZE_RATIO,
            "float32_bytes": mean(float32["bytes"]),
            "int8_bytes": mean(int8["bytes"]),
            "ratio": size_ratio,
            "min_ratio": MIN_SIZE_RATIO,
        },
        "int8_at_least_1_5x_faster_than_float32_tflite": {
            "passed": mean(speedups) >= MIN_SPEEDUP,
            "float32_latency_ms_median": mean(float32["latency_ms_median"]),
            "int8_latency_ms_median": mean(int8["latency_ms_median"]),
            "speedup_per_seed": speedups,
            "speedup": mean(speedups),
            "min_speedup": MIN_SPEEDUP,
        },
    }


def selection(args) -> dict:
    return {
        "tuned": "the head's kept epoch only: the lowest validation loss of the command's "
        f"{_head_settings(args.smoke)['epochs']} fixed-plan head epochs; everything else "
        "fixed before the run (head settings, the five export formats, "
        f"{args.representative_images} representative training images, latency on "
        f"{args.threads} thread(s), {args.latency_runs} runs after {args.latency_warmup} "
        "warm-up). Splits: the dataset's held-out folder is the test split, read once per "
        "seed after training and exporting; validation is 20% of each class of train/ by a "
        "stable hash of the seed and the path. The verdict is the issue's three goals for "
        "int8 TFLite (details.goals), not a comparison of arms",
        "tuned_on": "validation",
        "pairing": "per seed, every format is exported from the same trained model and "
        "tested on the same test images; latencies are measured back to back in an order "
        "rotated by one per seed",
    }


def write(args, run, records: list[dict]) -> dict:
    arms = {"keras_float": {"accuracy": [r["float_accuracy"] for r in records]}}
    for name in FORMATS:
        arms[name] = {metric: [r["formats"][name][metric] for r in records] for metric in METRICS}
    dataset = "smoke" if args.smoke else args.dataset
    _common.write_results(
        _common.results_path(args.output, args.smoke, f"deploy_{dataset}"),
        run,
        kind="accuracy",
        benchmark="deploy",
        dataset=dataset,
        splits=records[0]["splits"],
        evaluated_on="test",
        split_scheme="fixed",
        seeds=args.seeds,
        arms=arms,
        primary_metric="accuracy",
        comparisons=[],
        details={
            "goals": goals(arms),
            "per_seed": records,
            "latency": {
                "threads": args.threads,
                "runs": args.latency_runs,
                "warmup": args.latency_warmup,
                "image": "the first test image, one at a time",
            },
            "settings": {**vars(args), "assets": None, "head": _head_settings(args.smoke)},
        },
    )
    mean = statistics.fmean
    return {
        "formats": {
            name: {
                "bytes": int(round(mean(arms[name]["bytes"]))),
                "latency_ms_median": mean(arms[name]["latency_ms_median"]),
                "accuracy": mean(arms[name]["accuracy"]),
                "agreement_with_keras": mean(arms[name]["agreement_with_keras"]),
            }
            for name in FORMATS
        },
        "float_accuracy": mean(arms["keras_float"]["accuracy"]),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    from keras_transfer.apps import export as export_lib

    for export_format, mode in FORMATS.values():  # a missing converter stops before training
        export_lib.check_request(export_format, mode)
    run = _common.start_run(selection(args), script=__file__, argv=argv)
    records = [run_seed(args, seed) for seed in args.seeds]
    summary = write(args, run, records)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
