"""Cached feature extraction vs the Keras-guide recipe, on ants-vs-bees.

Both arms train the same head (global average pooling, dropout 0.2, softmax) on the same
images (224 px centre crops, no augmentation), seed, optimizer (Adam 1e-3) and epochs:

- `guide`: the Keras transfer-learning guide's way: the frozen backbone inside the model,
  `model.fit` on images, so every epoch runs the backbone over the training and
  validation images.
- `cached`: `fit_feature_extractor`: the backbone runs once over each split, the head
  trains on the cached features, then is re-attached to the backbone.

The decoded images are cached in memory (and warmed up) before either arm is timed. Both
arms run in one process, `--rounds` times; each round builds both models afresh (untimed)
and runs the two arms back to back, the guide first in even rounds and the cached arm first
in odd ones. The speedup is taken within a round (`guide s / cached s`); the goal is 8x at
equal validation accuracy. Nothing is tuned: the settings are the guide's.

    python benchmarks/feature_cache.py             # real data and weights, about 6 min
    python benchmarks/feature_cache.py --smoke     # seconds: synthetic data, weights=None

Writes `benchmarks/results/feature_cache.json` through `_common.write_results` (kind
"timing", with the git commit: `report.py` shows each ratio's history against the archived
runs). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import keras  # noqa: E402

import keras_transfer as kt  # noqa: E402
from keras_transfer.data import folders as data_lib  # noqa: E402
from keras_transfer.training import features  # noqa: E402

PAIRING = (
    "round r builds both models (untimed), then runs guide and cached back to back, guide "
    "first when r is even; the speedup is guide seconds over cached seconds within a round"
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output", default=None, help="results file")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.rounds, args.image_size = min(args.epochs, 2), min(args.rounds, 2), 32
    return args


def load_data(args):
    """The ants-vs-bees splits (or a synthetic folder), decoded and cached; the backbone
    factory for both arms."""
    if args.smoke:
        directory, weights, extra = _common.smoke_image_folder(), None, {"alpha": 0.25}
    else:
        assets = _common.assets_dir(args.assets, _common.DATASETS["hymenoptera"])
        directory = assets / _common.DATASETS["hymenoptera"]
        weights, extra = str(assets / _common.MOBILENET_WEIGHTS), {}
    data = data_lib.image_folder_dataset(
        directory, args.image_size, args.batch_size, augment=False, seed=args.seed
    )
    for dataset in (data.train, data.validation):  # decode and cache the images untimed
        for _ in dataset:
            pass
    shape = (args.image_size, args.image_size, 3)

    def backbone():
        return kt.create_backbone("mobilenet", input_shape=shape, weights=weights, **extra)

    return data, backbone


def run_guide(data, backbone, args) -> dict:
    keras.utils.set_random_seed(args.seed)
    model = kt.create_classifier(backbone(), len(data.class_names))
    kt.freeze(model)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    start = time.perf_counter()
    history = model.fit(data.train, validation_data=data.validation, epochs=args.epochs, verbose=0)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "val_accuracy": float(history.history["val_accuracy"][-1])}


def run_cached(data, backbone, args) -> dict:
    keras.utils.set_random_seed(args.seed)
    cached_backbone = backbone()  # built before the clock starts, as the guide's model is
    start = time.perf_counter()
    result = features.fit_feature_extractor(
        cached_backbone,
        data.train,
        data.validation,
        num_classes=len(data.class_names),
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        seed=args.seed,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    end_to_end = result.model.evaluate(data.validation, verbose=0, return_dict=True)
    return {
        "seconds": seconds,
        "val_accuracy": float(result.history.history["val_accuracy"][-1]),
        "extract_seconds": result.seconds["extract"],
        "head_train_seconds": result.seconds["train"],
        "end_to_end_val_accuracy": float(end_to_end["accuracy"]),
    }


def run_rounds(data, backbone, args) -> list[dict]:
    rounds = []
    for r in range(args.rounds):
        order = ("guide", "cached") if r % 2 == 0 else ("cached", "guide")
        arms = {}
        for arm in order:
            arms[arm] = (run_guide if arm == "guide" else run_cached)(data, backbone, args)
        arms["speedup"] = arms["guide"]["seconds"] / arms["cached"]["seconds"]
        print(
            f"round {r}: guide {arms['guide']['seconds']:.1f} s, cached "
            f"{arms['cached']['seconds']:.1f} s, speedup {arms['speedup']:.2f}; load "
            f"{_common.load_average()}",
            flush=True,
        )
        rounds.append(arms)
    return rounds


def results_arms(rounds: list[dict]) -> dict:
    """`{arm: {metric: [one value per round]}}` for `_common.write_results`."""
    guide = [r["guide"] for r in rounds]
    cached = [r["cached"] for r in rounds]
    return {
        "guide": {key: [g[key] for g in guide] for key in ("seconds", "val_accuracy")},
        "cached": {
            "seconds": [c["seconds"] for c in cached],
            "speedup_vs_guide": [r["speedup"] for r in rounds],
            **{
                key: [c[key] for c in cached]
                for key in (
                    "val_accuracy",
                    "extract_seconds",
                    "head_train_seconds",
                    "end_to_end_val_accuracy",
                )
            },  # fmt: skip
        },
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = _common.start_run(
        {
            "tuned": "nothing: both arms use the Keras guide's head, optimizer, learning rate "
            f"and {args.epochs} epochs; the validation accuracy of the last epoch is reported",
            "tuned_on": None,
            "pairing": PAIRING,
        },
        script=__file__,
        argv=argv,
    )
    data, backbone = load_data(args)
    rounds = run_rounds(data, backbone, args)
    record = _common.write_results(
        _common.results_path(args.output, args.smoke, "feature_cache"),
        run,
        kind="timing",
        benchmark="feature_cache",
        dataset="synthetic" if args.smoke else "hymenoptera",
        splits={"train": data.num_train, "validation": data.num_validation},
        evaluated_on="validation",
        repeats=args.rounds,
        arms=results_arms(rounds),
        primary_metric="seconds",
        comparisons=[["cached", "guide"]],
        details={"rounds": rounds, "settings": vars(args) | {"assets": None}},
    )
    speedups = [r["speedup"] for r in rounds]
    summary = {
        "speedup": statistics.median(speedups),
        "speedup_per_round": speedups,
        "guide_val_acc": record["arms"]["guide"]["val_accuracy"]["mean"],
        "cached_val_acc": record["arms"]["cached"]["val_accuracy"]["mean"],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
