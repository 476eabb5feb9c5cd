r"""Class weights on an imbalanced training set: cats vs dogs with 90% of the training dogs
removed, a head trained on cached ImageNet MobileNet V1 features with and without
`class_weight="balanced"`.

The 2000 training images (1000 cats, 1000 dogs) and the 1000 validation images (500 / 500,
balanced) go through the backbone once (224 px, central crop, average pooling). For each
seed, `--dog_fraction` of the training dogs are kept (seeded sample: 100 of 1000 by
default), and the package's default head (`ClassificationHead`: dropout 0.2, softmax) is
trained on the cached features twice from the same initial weights and the same batch
order: unweighted, and with Keras `class_weight` from `kt.resolve_class_weight("balanced",
labels)`. Both are scored on the balanced validation set (balanced accuracy and per-class
recall from `kt.classification_report`). `--extra_fractions` repeats the comparison at
stronger imbalance, and the same head trained on all 1000 dogs gives the ceiling. No
fine-tuning arm: the backbone stays frozen.

    python benchmarks/imbalance.py

The last stdout line is one JSON object (the summary below); the results file,
benchmarks/results/imbalance_cats_and_dogs.json, follows the results schema
(`_common.write_results`): one arm per (weighting, dog fraction) plus the all-dogs ceiling,
each metric per seed. It reports the dataset's validation folder, which selects nothing in
this script; until a test split is held out, the file is not a verdict (the schema asks
for `evaluated_on="test"`).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _common  # noqa: E402
import numpy as np  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1337,1,2,3,4")
    parser.add_argument("--dog_fraction", type=float, default=0.1)
    parser.add_argument("--extra_fractions", default="0.03,0.01")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output", default=None)
    parser.add_argument("--feature_cache_dir", default=None)
    return parser.parse_args(argv)


def train_and_score(args, seed, x, y, val_x, val_y, class_names, class_weight):
    import keras
    import tensorflow as tf

    import keras_transfer as kt

    keras.utils.set_random_seed(seed)
    head = kt.ClassificationHead(len(class_names), dropout=0.2)
    inputs = keras.Input((x.shape[1],))
    model = keras.Model(inputs, head(inputs))
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=head.default_loss(),
        metrics=head.default_metrics(),
    )
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=seed)
    model.fit(data.batch(args.batch_size), epochs=args.epochs, class_weight=class_weight, verbose=0)
    predicted = np.asarray(model.predict(val_x, verbose=0)).argmax(axis=-1)
    matrix = kt.confusion_matrix(val_y, predicted, len(class_names))
    report = kt.classification_report(matrix, class_names)
    return {
        "balanced_acc": report["balanced_accuracy"],
        "accuracy": report["accuracy"],
        "recall_per_class": report["recall_per_class"],
    }


SELECTION = {
    "tuned": "nothing: the head (dropout 0.2, Adam, epochs, batch) and the dog fractions are "
    "the script's flags, fixed before the run; the last epoch's head is scored",
    "tuned_on": None,
}


def results_arms(runs: dict, ceiling: list[dict], names: list[str]) -> dict:
    """`{arm: {metric: [one value per seed]}}` for `_common.write_results`: one arm per
    weighting and dog fraction (`unweighted@0.1`, `weighted@0.1`, ...) and `all_dogs`, the
    ceiling; metrics balanced accuracy, accuracy and each class's recall."""

    def metrics(scores: list[dict]) -> dict:
        out = {
            "balanced_accuracy": [s["balanced_acc"] for s in scores],
            "accuracy": [s["accuracy"] for s in scores],
        }
        for name in names:
            out[f"recall_{name}"] = [s["recall_per_class"][name] for s in scores]
        return out

    arms = {}
    for fraction, rows in runs.items():
        for arm in ("unweighted", "weighted"):
            arms[f"{arm}@{fraction}"] = metrics([row[arm] for row in rows])
    arms["all_dogs"] = metrics(ceiling)
    return arms


def main(argv=None):
    args = parse_args(argv)
    run = _common.start_run(SELECTION, script=__file__, argv=argv)
    start = time.perf_counter()
    import keras_transfer as kt

    assets = _common.assets_dir(args.assets, _common.DATASETS["cats_and_dogs"])
    feats = _common.mobilenet_features(assets, "cats_and_dogs", cache_dir=args.feature_cache_dir)
    train_x, train_y = feats["train_x"], feats["train_y"]
    val_x, val_y = feats["val_x"], feats["val_y"]
    names = feats["class_names"]
    dog = names.index("dogs")
    seeds = [int(s) for s in args.seeds.split(",")]
    fractions = [args.dog_fraction] + [
        float(f) for f in args.extra_fractions.split(",") if f.strip()
    ]
    print(
        f"cats_and_dogs: {len(train_y)} training / {len(val_y)} validation features; "
        f"extraction {feats['extract_seconds']:.1f} s"
        + (" (read from the feature cache)" if feats["from_cache"] else ""),
        flush=True,
    )
    runs = {}
    for fraction in fractions:
        rows = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            dogs = np.flatnonzero(train_y == dog)
            kept = rng.choice(dogs, size=int(round(fraction * len(dogs))), replace=False)
            index = np.sort(np.concatenate([np.flatnonzero(train_y != dog), kept]))
            x, y = train_x[index], train_y[index]
            weights = kt.resolve_class_weight("balanced", y, class_names=names)
            row = {
                "seed": seed,
                "train_counts": kt.class_counts(y, len(names)).tolist(),
                "class_weight": {names[c]: w for c, w in weights.items()},
                "unweighted": train_and_score(args, seed, x, y, val_x, val_y, names, None),
                "weighted": train_and_score(args, seed, x, y, val_x, val_y, names, weights),
            }
            rows.append(row)
            print(
                f"dogs kept {fraction:.0%} (counts {row['train_counts']}), seed {seed}: "
                f"balanced accuracy unweighted {row['unweighted']['balanced_acc']:.4f} "
                f"(recall {row['unweighted']['recall_per_class']}), weighted "
                f"{row['weighted']['balanced_acc']:.4f} (recall "
                f"{row['weighted']['recall_per_class']})",
                flush=True,
            )
        runs[f"{fraction:g}"] = rows
    ceiling_scores = [
        train_and_score(args, seed, train_x, train_y, val_x, val_y, names, None) for seed in seeds
    ]
    ceiling = [score["balanced_acc"] for score in ceiling_scores]

    def mean(rows, arm, key="balanced_acc"):
        return float(np.mean([r[arm][key] for r in rows]))

    def mean_recall(rows, arm):
        return {n: float(np.mean([r[arm]["recall_per_class"][n] for r in rows])) for n in names}

    main_rows = runs[f"{args.dog_fraction:g}"]
    summary = {
        "dataset": "cats_and_dogs",
        "dog_fraction": args.dog_fraction,
        "balanced_acc_unweighted": mean(main_rows, "unweighted"),
        "balanced_acc_weighted": mean(main_rows, "weighted"),
        "recall_per_class_unweighted": mean_recall(main_rows, "unweighted"),
        "recall_per_class_weighted": mean_recall(main_rows, "weighted"),
        "improvement_points": 100 * (mean(main_rows, "weighted") - mean(main_rows, "unweighted")),
        "improved_in_seeds": sum(
            r["weighted"]["balanced_acc"] > r["unweighted"]["balanced_acc"] for r in main_rows
        ),
        "balanced_acc_all_training_dogs": float(np.mean(ceiling)),
        "by_fraction": {
            fraction: {
                "balanced_acc_unweighted": mean(rows, "unweighted"),
                "balanced_acc_weighted": mean(rows, "weighted"),
                "recall_per_class_unweighted": mean_recall(rows, "unweighted"),
                "recall_per_class_weighted": mean_recall(rows, "weighted"),
            }
            for fraction, rows in runs.items()
        },
        "runs": runs,
        "seeds": seeds,
        "head": f"ClassificationHead dropout 0.2, Adam {args.learning_rate:g}, "
        f"{args.epochs} epochs, batch {args.batch_size}, on cached features",
        "backbone": "MobileNet V1 ImageNet, 224 px, average pooling, frozen",
        "extract_seconds": round(feats["extract_seconds"], 1),
        "features_from_cache": feats["from_cache"],
        "load_average": _common.load_average(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    out = _common.output_dir(args.output, "")
    _common.write_results(
        out / "imbalance_cats_and_dogs.json",
        run,
        kind="accuracy",
        benchmark="imbalance",
        dataset="cats_and_dogs",
        splits={"train": int(len(train_y)), "validation": int(len(val_y))},
        evaluated_on="validation",
        seeds=seeds,
        arms=results_arms(runs, ceiling_scores, names),
        primary_metric="balanced_accuracy",
        comparisons=[[f"weighted@{f}", f"unweighted@{f}"] for f in runs],
        details={k: v for k, v in summary.items() if k not in ("seeds", "load_average")},
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
