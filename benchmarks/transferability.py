"""Do transferability scores rank MobileNet V1's blocks as a linear probe does?

For every block of MobileNet V1 (real ImageNet weights), from one backbone pass over each
split (`keras_transfer.diagnostics.transfer_scores.block_features`):

- LogME, H-score (plain, as Bao et al.; and Ledoit-Wolf-regularised) on the training
  split's average-pooled block outputs; LEEP through the ImageNet top of the with-top
  weights file, which applies to the last block only;
- the validation accuracy of a linear probe (multinomial logistic regression, L2, on
  standardised features, full-batch Nesterov gradient descent; NumPy) trained on the
  training split's features of that block.

Kendall's tau-b between each score and the probe accuracies over the blocks measures how
well the score ranks the blocks without training. LEEP scores one block, so it has no tau.

    python benchmarks/transferability.py --dataset hymenoptera
    python benchmarks/transferability.py --dataset cats_and_dogs
    python benchmarks/transferability.py --dataset hymenoptera --shuffle_patches 4
    python benchmarks/transferability.py --smoke     # seconds: synthetic data, weights=None

`--shuffle_patches N` builds a domain-shifted dataset offline: every image is cut into an
N x N grid of patches, rearranged by one fixed random permutation, so local textures stay and
object shapes are broken (the deepest, most ImageNet-specific blocks should lose most).

Writes benchmarks/results/transferability_<dataset>.json; the last line printed is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The scores' eigendecompositions run several times faster on one BLAS thread than on two
# on this shared 2-core machine (measured: 0.12 s vs 4-9 s for 245 x 1024 features).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_transfer as kt  # noqa: E402
from keras_transfer.diagnostics import transfer_scores  # noqa: E402

MOBILENET_WITH_TOP = "weights/mobilenet_1_0_224_tf.h5"


def kendall_tau_b(x, y) -> float | None:
    """Kendall's tau-b (ties in either variable are handled as in scipy.stats.kendalltau)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant_minus_discordant = float((dx * dy).sum())
    untied_x, untied_y = float((dx != 0).sum()), float((dy != 0).sum())
    if untied_x == 0 or untied_y == 0:
        return None  # undefined: one of the rankings is all ties
    return concordant_minus_discordant / np.sqrt(untied_x * untied_y)


def linear_probe_accuracy(
    train_x, train_y, val_x, val_y, *, l2: float = 1e-3, iterations: int = 500
) -> float:
    """Validation accuracy of L2-regularised softmax regression on standardised features."""
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    a = np.hstack([(train_x - mean) / std, np.ones((len(train_x), 1))])
    b = np.hstack([(val_x - mean) / std, np.ones((len(val_x), 1))])
    classes = int(max(train_y.max(), val_y.max())) + 1
    targets = np.eye(classes)[train_y]
    # Lipschitz constant of the mean softmax loss's gradient: ||A||^2 / (2 N) (+ l2).
    step = 1.0 / (np.linalg.norm(a, 2) ** 2 / (2 * len(a)) + l2)
    w = np.zeros((a.shape[1], classes))
    velocity_point, previous = w.copy(), w.copy()
    for t in range(1, iterations + 1):
        logits = a @ velocity_point
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        gradient = a.T @ (p - targets) / len(a) + l2 * velocity_point
        w = velocity_point - step * gradient
        velocity_point = w + (t - 1) / (t + 2) * (w - previous)
        previous = w
    return float(np.mean((b @ w).argmax(axis=1) == val_y))


def shuffle_patches(dataset, grid: int, seed: int = 0):
    """`dataset` of `(images, labels)` with each image's N x N patches permuted the same way."""
    import tensorflow as tf

    permutation = tf.constant(np.random.default_rng(seed).permutation(grid * grid))

    def scramble(images, labels):
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        ph, pw = height // grid, width // grid
        x = images[:, : ph * grid, : pw * grid, :]
        x = tf.reshape(x, (batch, grid, ph, grid, pw, 3))
        x = tf.transpose(x, (0, 1, 3, 2, 4, 5))
        x = tf.reshape(x, (batch, grid * grid, ph, pw, 3))
        x = tf.gather(x, permutation, axis=1)
        x = tf.reshape(x, (batch, grid, grid, ph, pw, 3))
        x = tf.transpose(x, (0, 1, 3, 2, 4, 5))
        return tf.reshape(x, (batch, ph * grid, pw * grid, 3)), labels

    return dataset.map(scramble)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(_common.DATASETS), default="hymenoptera")
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output", default=None, help="results JSON path")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--probe_l2", type=float, default=1e-3)
    parser.add_argument("--shuffle_patches", type=int, default=0, help="N: N x N patches")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    if args.smoke:
        directory, size = _common.smoke_image_folder(), 32
        backbone = kt.create_backbone("mobilenet", input_shape=(size, size, 3), weights=None)
        with_top = keras.applications.MobileNet(
            weights=None, input_shape=(size, size, 3), classes=10
        )
        for layer in backbone.model.layers:
            if layer.weights:
                layer.set_weights(with_top.get_layer(layer.name).get_weights())
    else:
        assets = _common.assets_dir(args.assets, _common.DATASETS[args.dataset])
        directory, size = assets / _common.DATASETS[args.dataset], args.image_size
        backbone = kt.create_backbone(
            "mobilenet",
            input_shape=(size, size, 3),
            weights=str(assets / _common.MOBILENET_WEIGHTS),
        )
        with_top = keras.applications.MobileNet(
            weights=str(assets / MOBILENET_WITH_TOP), input_shape=(size, size, 3)
        )
    source_head = transfer_scores.source_head_from_model(with_top, backbone)
    data = kt.image_folder_dataset(
        directory, image_size=size, batch_size=args.batch_size, augment=False, shuffle=False
    )

    train, validation = data.train, data.validation
    name = "smoke" if args.smoke else args.dataset
    if args.shuffle_patches:
        train = shuffle_patches(train, args.shuffle_patches)
        validation = shuffle_patches(validation, args.shuffle_patches)
        name += f"_patches{args.shuffle_patches}"
    extract_start = time.perf_counter()
    train_features, train_labels = transfer_scores.block_features(
        backbone, train, "all", source_head=source_head
    )
    val_features, val_labels = transfer_scores.block_features(backbone, validation, "all")
    extract_seconds = time.perf_counter() - extract_start
    source = train_features.pop(transfer_scores.SOURCE_PROBABILITIES)
    val_features.pop(transfer_scores.SOURCE_PROBABILITIES, None)
    blocks = backbone.block_names()
    train_y, val_y = train_labels.astype(int).ravel(), val_labels.astype(int).ravel()

    score_start = time.perf_counter()
    scores = {
        "logme": {b: kt.logme(train_features[b], train_y) for b in blocks},
        "hscore": {b: kt.h_score(train_features[b], train_y) for b in blocks},
        "hscore_shrinkage_auto": {
            b: kt.h_score(train_features[b], train_y, shrinkage="auto") for b in blocks
        },
        "leep": {blocks[-1]: kt.leep(source, train_y)},
    }
    score_seconds = time.perf_counter() - score_start

    probe_start = time.perf_counter()
    probe = {
        b: linear_probe_accuracy(
            train_features[b], train_y, val_features[b], val_y, l2=args.probe_l2
        )
        for b in blocks
    }
    probe_seconds = time.perf_counter() - probe_start
    accuracies = [probe[b] for b in blocks]
    tau = {
        method: kendall_tau_b([scores[method][b] for b in blocks], accuracies)
        for method in ("logme", "hscore", "hscore_shrinkage_auto")
    }
    tau["leep"] = None
    for b in blocks:
        print(
            f"{b:>11}  probe {probe[b]:.3f}  logme {scores['logme'][b]:+.4f}  "
            f"hscore {scores['hscore'][b]:.3f}  hscore(LW) {scores['hscore_shrinkage_auto'][b]:.3f}"
        )
    print(f"LEEP ({blocks[-1]}, ImageNet top): {scores['leep'][blocks[-1]]:.4f}")
    result = {
        "dataset": name,
        "kendall_tau": tau,
        "probe_acc_by_block": probe,
        "seconds": time.perf_counter() - start,
        "scores_by_block": scores,
        "leep_note": "LEEP needs the source (ImageNet) classifier, which applies to the last "
        "block only: one score, no ranking of blocks.",
        "best_block": {
            "probe": max(blocks, key=probe.get),
            "logme": max(blocks, key=scores["logme"].get),
            "hscore": max(blocks, key=scores["hscore"].get),
            "hscore_shrinkage_auto": max(blocks, key=scores["hscore_shrinkage_auto"].get),
        },
        "seconds_by_step": {
            "extract_both_splits": extract_seconds,
            "scores": score_seconds,
            "probes": probe_seconds,
        },
        "num_train": len(train_y),
        "num_validation": len(val_y),
        "image_size": size,
        "probe": f"softmax regression, L2 {args.probe_l2}, standardised features, 500 steps",
        "load_average": _common.load_average(),
        "command": "python benchmarks/transferability.py "
        + ("--smoke" if args.smoke else f"--dataset {args.dataset}")
        + (f" --shuffle_patches {args.shuffle_patches}" if args.shuffle_patches else ""),
    }
    if not args.smoke or args.output:
        path = args.output or (
            _common.REPO_ROOT / "benchmarks" / "results" / f"transferability_{name}.json"
        )
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _common.write_json(path, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
