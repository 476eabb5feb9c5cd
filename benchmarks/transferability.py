"""Do transferability scores pick the candidate a linear probe would pick, better than depth?

Ranking the blocks of one network proves nothing: its deepest block wins on the easy tasks
here, so "depth" alone ranks them as well as any score. This benchmark ranks a candidate set
where depth is not the answer, on three target tasks, and counts a score only where its rank
correlation beats both baselines: `depth_baseline` (the block's depth) and
`imagenet_baseline` (the ImageNet top-1 of the candidate's checkpoint).

Target tasks (images disjoint between tasks, so no checkpoint was fine-tuned on a target's
images):

- `hymenoptera`: ants vs bees, every JPEG of `hymenoptera_data` (train/ and val/);
- `cats_and_dogs`: cats vs dogs, `--per_class` images per class of
  `cats_and_dogs_filtered/train/` (the lowest `stable_unit(path, SUBSAMPLE_SALT)`: a fixed subsample drawn with a salt no
  split seed uses, so the subsample does not decide the splits);
- `rotation`: a derived 4-way task, the orientation (0, 90, 180, 270 degrees) of
  `--rotation_images` photos of `cats_and_dogs_filtered/validation/`, each square-cropped
  then rotated (rotation k for the i-th image in stable-hash order: i mod 4, balanced).

Candidates per target task (checkpoint x block, 17): the blocks `conv_dw_5, 9, 11, 13`
of MobileNet V1 with the ImageNet weights (`imagenet`), the same network fine-tuned on each
OTHER task (`finetuned_on_<task>`; once per source task on all of its images, cached in
`--cache_dir`), randomly initialised (`random`, seed 0); and the TF Hub-style SavedModel
(`hub@output`, its pooled output only: the same weights as `imagenet`, so it differs from
`imagenet@conv_dw_13` only by its own preprocessing of [0, 1] inputs).

Fine-tuning a source checkpoint (fixed, nothing tuned): a softmax head on the pooled
features, 2 epochs with the backbone frozen (Adam 1e-3), then 2 epochs of every layer with
BatchNorm in inference mode (Adam 1e-4), batch 32, seed 0, no augmentation (a flip changes
the rotation label).

Ground truth per (candidate, task, seed): the test accuracy of a linear probe (softmax
regression on standardised pooled features, full-batch Nesterov gradient descent, NumPy)
trained on the training split, its L2 chosen from `L2_GRID` on the validation split. Each
seed draws a new stable stratified split of every task (`keras_transfer.data.splits.
assign_splits`, 50% train / 20% validation / 30% test; `split_scheme: repeated_stratified`).

Scores, on the training split only: LogME (You et al., ICML 2021), the Ledoit-Wolf
shrinkage H-score (`hscore_shrinkage`: Bao et al., ICIP 2019, regularised as Ibrahim et
al., ICLR 2022; the plain H-score is left out: with more channels than images its
differences are numerical noise near 1e-10), and LEEP (Nguyen et al., ICML 2020) where the
checkpoint has a source classifier (the ImageNet top, the fine-tuned heads; not `random` or
`hub`): LEEP scores a checkpoint, so its tau runs over those 12 candidates only, and it is
compared with the baselines' `*_heads_only` taus over the same 12.

Rank correlation with the probe's test accuracy over the candidates, per task and seed:
Kendall's tau-b, and a weighted tau (Vigna, "A weighted correlation index for rankings with
ties", WWW 2015: hyperbolic weights 1 / (r + 1) of the probe's rank r, additive per pair,
tau-b's tie handling), which counts the top of the ranking most. Arms: `logme`,
`hscore_shrinkage`, `leep`, `depth_baseline` (the block's index, `hub@output` = 13) and
`imagenet_baseline` (top-1 70.4%, Keras Applications table, for `imagenet` and `hub`;
Howard et al. 2017 report 70.6%. Fine-tuned checkpoints cannot be measured on ImageNet
offline: the declared proxy is the order ImageNet > fine-tuned > random, i.e. 0.35 for
fine-tuned and 0.001 (chance) for random; only the order enters tau). Metrics per arm:
`kendall_tau` (per seed, the mean over the three tasks; primary), `weighted_tau`, and
`kendall_tau_<task>`, `weighted_tau_<task>`.

    python benchmarks/transferability.py              # the verdict run, 5 seeds
    python benchmarks/transferability.py --smoke      # seconds: synthetic tasks, weights=None

Expected duration of the verdict run on 2 CPU cores, alone on the machine: 15 to 25 minutes
(an estimate, not a measurement: the smoke run takes ~100 s, mostly building and tracing
models, which does not scale with the data; counted from the work: 3 fine-tunings of ~400
images x 4 epochs, 14 extraction passes of ~400 images at 224 px, 255 candidate-task-seed
probes x 5 L2 values).

Writes benchmarks/results/transferability.json (`kind: "ranking"`) through
`_common.write_results`; `--smoke` writes to a temporary folder unless `--output` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The scores' eigendecompositions run several times faster on one BLAS thread than on two
# on this shared 2-core machine (measured: 0.12 s vs 4-9 s for 245 x 1024 features).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_transfer as kt  # noqa: E402
from keras_transfer.backbones.preprocessing import ImagePreprocessing  # noqa: E402
from keras_transfer.data import splits as splits_lib  # noqa: E402
from keras_transfer.diagnostics import transfer_scores  # noqa: E402

MOBILENET_WITH_TOP = "weights/mobilenet_1_0_224_tf.h5"
HUB_MODEL = "tfhub/mobilenet_v1_100_224_feature_vector"
BLOCKS = ("conv_dw_5", "conv_dw_9", "conv_dw_11", "conv_dw_13")
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
SPLIT = {"validation_split": 0.2, "test_split": 0.3}
IMAGENET_TOP1 = {"imagenet": 0.704, "hub": 0.704, "finetuned": 0.35, "random": 0.001}
SCORES = ("logme", "hscore_shrinkage", "leep")
BASELINES = ("depth_baseline", "imagenet_baseline")
FINE_TUNE = {"head_epochs": 2, "head_lr": 1e-3, "full_epochs": 2, "full_lr": 1e-4, "batch": 32}


class Task(NamedTuple):
    """A target task: uint8 images, integer labels, and a stable key per image."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    keys: list[str]


class Checkpoint(NamedTuple):
    """A backbone with its blocks, the source head for LEEP (or None), its ImageNet top-1."""

    name: str
    backbone: object
    head: object | None
    imagenet_top1: float
    blocks: tuple[str | None, ...] = BLOCKS


# --- rank correlations ----------------------------------------------------------------------


def _pair_signs(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    i, j = np.triu_indices(len(x), k=1)
    return i, j, np.sign(x[i] - x[j]), np.sign(y[i] - y[j])


def kendall_tau_b(x, y) -> float | None:
    """Kendall's tau-b (ties in either variable handled as in scipy.stats.kendalltau);
    None when either ranking is all ties."""
    _, _, dx, dy = _pair_signs(x, y)
    untied_x, untied_y = float((dx != 0).sum()), float((dy != 0).sum())
    if untied_x == 0 or untied_y == 0:
        return None
    return float((dx * dy).sum()) / np.sqrt(untied_x * untied_y)


def weighted_tau(score, truth) -> float | None:
    """Vigna's weighted tau of `score` against `truth`: pair (i, j) weighs w(r_i) + w(r_j),
    w(r) = 1 / (r + 1), r the rank by decreasing `truth` (ties share the best rank); ties
    as in tau-b (Vigna's definition, which `scipy.stats.weightedtau(score, truth, rank=r)`
    also computes; not compared with SciPy here, which is not installed). The top of the
    probe's ranking counts most."""
    truth = np.asarray(truth, float)
    rank = np.array([(truth > t).sum() for t in truth], float)
    i, j, dx, dy = _pair_signs(score, truth)
    weight = 1.0 / (rank[i] + 1.0) + 1.0 / (rank[j] + 1.0)
    untied_x, untied_y = float((weight * (dx != 0)).sum()), float((weight * (dy != 0)).sum())
    if untied_x == 0 or untied_y == 0:
        return None
    return float((weight * dx * dy).sum()) / np.sqrt(untied_x * untied_y)


# --- the ground truth: a linear probe -------------------------------------------------------


def softmax_regression(x, y, classes: int, *, l2: float, iterations: int = 500) -> np.ndarray:
    """Weights (with a bias row) of L2-regularised softmax regression, full-batch Nesterov."""
    a = np.hstack([x, np.ones((len(x), 1))])
    targets = np.eye(classes)[y]
    # Lipschitz constant of the mean softmax loss's gradient: ||A||^2 / (2 N) (+ l2).
    step = 1.0 / (np.linalg.norm(a, 2) ** 2 / (2 * len(a)) + l2)
    w = np.zeros((a.shape[1], classes))
    point, previous = w.copy(), w.copy()
    for t in range(1, iterations + 1):
        logits = a @ point
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        w = point - step * (a.T @ (p - targets) / len(a) + l2 * point)
        point = w + (t - 1) / (t + 2) * (w - previous)
        previous = w
    return w


def probe_test_accuracy(features, labels, split, l2_grid=L2_GRID) -> tuple[float, float]:
    """(test accuracy, chosen L2) of the linear probe: trained on the training split, its L2
    the grid's value with the best validation accuracy (the larger L2 on a tie)."""
    tr, va, te = (split == s for s in (splits_lib.TRAIN, splits_lib.VALIDATION, splits_lib.TEST))
    mean, std = features[tr].mean(axis=0), features[tr].std(axis=0) + 1e-6
    x = (features - mean) / std
    classes = int(labels.max()) + 1

    def accuracy(w, mask):
        return float(np.mean((np.hstack([x[mask], np.ones((mask.sum(), 1))]) @ w).argmax(1)
                             == labels[mask]))  # fmt: skip

    fits = [(l2, softmax_regression(x[tr], labels[tr], classes, l2=l2)) for l2 in l2_grid]
    best_l2, best_w = max(reversed(fits), key=lambda f: accuracy(f[1], va))
    return accuracy(best_w, te), float(best_l2)


# --- tasks ----------------------------------------------------------------------------------


def load_square(path: pathlib.Path, size: int) -> np.ndarray:
    """The central square crop (the shorter side) of an image, resized to `size`, uint8."""
    import tensorflow as tf

    image = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
    h, w = int(image.shape[0]), int(image.shape[1])
    side = min(h, w)
    image = image[
        (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side
    ]
    resized = tf.image.resize(tf.cast(image, tf.float32), (size, size), antialias=True)
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def _jpegs(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))


# The subsamples' hash salt. It must differ from every split seed: a subsample taken as the
# lowest stable_unit(key, 0) would all fall in seed 0's test interval [0, test_split).
SUBSAMPLE_SALT = 1_000_003


def _by_hash(paths: list[pathlib.Path], root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(
        paths, key=lambda p: splits_lib.stable_unit(p.relative_to(root).as_posix(), SUBSAMPLE_SALT)
    )


def real_tasks(assets: pathlib.Path, size: int, per_class: int, rotation_images: int) -> list:
    """The three target tasks of the module docstring, from the assets."""
    root = assets / "datasets"
    tasks = []
    hymenoptera, cats_dogs = root / "hymenoptera_data", root / "cats_and_dogs_filtered"
    for name, classes in (
        (
            "hymenoptera",
            [[hymenoptera / s / c for s in ("train", "val")] for c in ("ants", "bees")],
        ),
        ("cats_and_dogs", [[cats_dogs / "train" / c] for c in ("cats", "dogs")]),
    ):
        files, labels = [], []
        for label, folders in enumerate(classes):
            found = [p for folder in folders for p in _jpegs(folder)]
            chosen = found if name == "hymenoptera" else _by_hash(found, root)[:per_class]
            files += chosen
            labels += [label] * len(chosen)
        images = np.stack([load_square(p, size) for p in files])
        keys = [p.relative_to(root).as_posix() for p in files]
        tasks.append(Task(name, images, np.array(labels), keys))
    pool = _jpegs(cats_dogs / "validation" / "cats") + _jpegs(cats_dogs / "validation" / "dogs")
    chosen = _by_hash(pool, root)[:rotation_images]
    labels = np.arange(len(chosen)) % 4
    images = np.stack([np.rot90(load_square(p, size), k) for p, k in zip(chosen, labels)])
    keys = [p.relative_to(root).as_posix() for p in chosen]
    tasks.append(Task("rotation", images, labels, keys))
    return tasks


def smoke_tasks(size: int = 32, per_class: int = 16) -> list:
    """Three tiny synthetic tasks: red vs green, bright vs dark, the orientation of a ramp."""
    rng = np.random.default_rng(0)
    tasks = []
    for name, classes in (("colour", 2), ("brightness", 2), ("orientation", 4)):
        labels = np.repeat(np.arange(classes), per_class)
        images = rng.uniform(0, 90, (len(labels), size, size, 3))
        for n, label in enumerate(labels):
            if name == "colour":
                images[n, ..., label] += 150
            elif name == "brightness":
                images[n] += 140 * label
            else:
                ramp = np.linspace(0, 160, size)[None, :, None] * np.ones((size, 1, 1))
                images[n] += np.rot90(ramp, label)
        keys = [f"{name}/{n}" for n in range(len(labels))]
        tasks.append(Task(name, images.clip(0, 255).astype(np.uint8), labels, keys))
    return tasks


# --- checkpoints ----------------------------------------------------------------------------


def _dataset(task: Task, batch: int = 32, shuffle: bool = False):
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((task.images, task.labels))
    if shuffle:
        data = data.shuffle(len(task.labels), seed=0, reshuffle_each_iteration=True)
    return data.batch(batch).map(lambda x, y: (tf.cast(x, tf.float32), y))


def mobilenet(size: int, weights: str | None, seed: int = 0):
    keras.utils.set_random_seed(seed)
    return kt.create_backbone("mobilenet", input_shape=(size, size, 3), weights=weights)


def fine_tuned(source: Task, size: int, weights: str | None, cache_dir: pathlib.Path, epochs=None):
    """MobileNet fine-tuned on all of `source`'s images by the fixed recipe of the module
    docstring (`FINE_TUNE`), cached in `cache_dir`; returns `(backbone, head)`."""
    settings = dict(FINE_TUNE, **(epochs or {}))
    backbone = mobilenet(size, weights)
    classes = int(source.labels.max()) + 1
    head = keras.Sequential(
        [
            keras.Input(backbone.model.output_shape[1:]),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes, activation="softmax"),
        ],
        name=f"head_{source.name}",
    )
    inputs = keras.Input((size, size, 3))
    features = backbone.model(ImagePreprocessing(backbone.preprocessing)(inputs), training=False)
    model = keras.Model(inputs, head(features))
    tag = f"{settings['head_epochs']}+{settings['full_epochs']}ep_{len(source.labels)}img"
    path = cache_dir / f"finetuned_{source.name}_{size}px_{tag}.weights.h5"
    if path.exists():
        model.load_weights(path)
        return backbone, head
    data = _dataset(source, settings["batch"], shuffle=True)
    for trainable, lr, n in ((False, "head_lr", "head_epochs"), (True, "full_lr", "full_epochs")):
        backbone.model.trainable = trainable
        model.compile(keras.optimizers.Adam(settings[lr]), "sparse_categorical_crossentropy")
        model.fit(data, epochs=settings[n], verbose=0)
    cache_dir.mkdir(parents=True, exist_ok=True)
    model.save_weights(path)
    return backbone, head


def hub_backbone(path: str, smoke: bool, size: int):
    """The hub candidate; in a smoke run a SavedModel exported here from the ImageNet
    stand-in (the same weights, taking [0, 1] inputs as the real one does)."""
    if not smoke:
        return kt.create_backbone(f"hub:{path}", input_shape=(size, size, 3))
    stand_in = mobilenet(size, None, seed=1)
    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(stand_in.model(inputs * 2.0 - 1.0))
    folder = pathlib.Path(tempfile.mkdtemp(prefix="keras_transfer_smoke_hub_")) / "hub"
    keras.Model(inputs, pooled).export(str(folder), verbose=False)
    return kt.backbones.create_hub_backbone(
        str(folder), input_shape=(size, size, 3), signature="serving_default"
    )


def shared_checkpoints(args, assets) -> list[Checkpoint]:
    """`imagenet` (with the ImageNet top as its source head), `random`, `hub`."""
    size = args.image_size
    if args.smoke:
        imagenet, with_top = mobilenet(size, None, seed=1), None
        keras.utils.set_random_seed(1)
        with_top = keras.applications.MobileNet(weights=None, input_shape=(size,) * 2 + (3,))
        for layer in imagenet.model.layers:
            if layer.weights:
                with_top.get_layer(layer.name).set_weights(layer.get_weights())
    else:
        imagenet = mobilenet(size, str(assets / _common.MOBILENET_WEIGHTS))
        with_top = keras.applications.MobileNet(
            weights=str(assets / MOBILENET_WITH_TOP), input_shape=(size, size, 3)
        )
    head = transfer_scores.source_head_from_model(with_top, imagenet)
    hub = hub_backbone(str(assets / HUB_MODEL) if assets else "", args.smoke, size)
    return [
        Checkpoint("imagenet", imagenet, head, IMAGENET_TOP1["imagenet"]),
        Checkpoint("random", mobilenet(size, None, seed=0), None, IMAGENET_TOP1["random"]),
        Checkpoint("hub", hub, None, IMAGENET_TOP1["hub"], blocks=(None,)),
    ]


# --- one target task ------------------------------------------------------------------------


def candidates_of(task: Task, checkpoints: list[Checkpoint]) -> dict:
    """`{candidate: {features, source, depth, imagenet_top1, checkpoint}}` for `task`: one
    backbone pass per checkpoint (every block at once, and the source head's output)."""
    table = {}
    for ckpt in checkpoints:
        blocks = list(ckpt.blocks) if ckpt.blocks != (None,) else None
        features, _ = transfer_scores.block_features(
            ckpt.backbone, _dataset(task), blocks, source_head=ckpt.head
        )
        source = features.pop(transfer_scores.SOURCE_PROBABILITIES, None)
        for block, values in features.items():
            depth = 13 if block == "output" else int(block.rsplit("_", 1)[1])
            table[f"{ckpt.name}@{block}"] = {
                "features": values.astype(np.float64),
                "source": source,
                "depth": depth,
                "imagenet_top1": ckpt.imagenet_top1,
                "checkpoint": ckpt.name,
            }
    return table


def seed_taus(task: Task, table: dict, seed: int) -> tuple[dict, dict]:
    """Per arm, `{kendall_tau, weighted_tau}` (and the baselines' `*_heads_only`) on one
    seed's split of `task`; and the per-candidate numbers behind them."""
    split = splits_lib.assign_splits(task.keys, task.labels, seed=seed, **SPLIT)
    train = split == splits_lib.TRAIN
    y = task.labels[train]
    rows = {}
    for name, c in table.items():
        accuracy, l2 = probe_test_accuracy(c["features"], task.labels, split)
        f = c["features"][train]
        rows[name] = {
            "probe_test_accuracy": accuracy,
            "probe_l2": l2,
            "logme": kt.logme(f, y),
            "hscore_shrinkage": kt.h_score(f, y, shrinkage="auto"),
            "leep": None if c["source"] is None else kt.leep(c["source"][train], y),
            "depth_baseline": c["depth"],
            "imagenet_baseline": c["imagenet_top1"],
        }
    heads = [n for n in rows if rows[n]["leep"] is not None]
    taus = {}
    for arm in (*SCORES, *BASELINES):
        names = heads if arm == "leep" else list(rows)
        taus[arm] = correlations(rows, names, arm)
        if arm in BASELINES:
            taus[arm].update(
                {f"{k}_heads_only": v for k, v in correlations(rows, heads, arm).items()}
            )
    counts = {name: int(m.sum()) for name, m in zip(("train", "validation", "test"),
                                                    (split == s for s in range(3)))}  # fmt: skip
    return taus, {"candidates": rows, "splits": counts}


def correlations(rows: dict, names: list[str], arm: str) -> dict:
    """Kendall's tau-b and the weighted tau of `arm` against the probe over `names`; an
    undefined tau (a ranking of all ties) is recorded as 0.0 and flagged."""
    score = [rows[n][arm] for n in names]
    truth = [rows[n]["probe_test_accuracy"] for n in names]
    out = {}
    for key, fn in (("kendall_tau", kendall_tau_b), ("weighted_tau", weighted_tau)):
        value = fn(score, truth)
        out[key] = 0.0 if value is None else value
        if value is None:
            out.setdefault("undefined", []).append(key)
    return out


# --- the run --------------------------------------------------------------------------------


def results_arms(per_seed: list[dict], task_names: list[str]) -> dict:
    """`{arm: {metric: [one value per seed]}}` from `per_seed[s][task][arm][metric]`:
    each metric per task, and `kendall_tau` / `weighted_tau` (and the baselines'
    `*_heads_only`) as the mean over the tasks of the seed."""
    arms = {}
    for arm in (*SCORES, *BASELINES):
        metrics = {}
        keys = ["kendall_tau", "weighted_tau"]
        if arm in BASELINES:
            keys += ["kendall_tau_heads_only", "weighted_tau_heads_only"]
        for key in keys:
            metrics[key] = [float(np.mean([s[t][arm][key] for t in task_names])) for s in per_seed]
        for key in keys:
            for t in task_names:
                metrics[f"{key}_{t}"] = [s[t][arm][key] for s in per_seed]
        arms[arm] = metrics
    return arms


def verdict(arms: dict) -> dict:
    """Which score beats both baselines on the mean `kendall_tau` (LEEP: against the
    baselines' `kendall_tau_heads_only`, the same 12 candidates)."""
    out = {}
    for score in SCORES:
        key = "kendall_tau_heads_only" if score == "leep" else "kendall_tau"
        mean = float(np.mean(arms[score]["kendall_tau"]))
        against = {b: float(np.mean(arms[b][key])) for b in BASELINES}
        out[score] = {"mean": mean, "baselines": against,
                      "beats_both": all(mean > v for v in against.values())}  # fmt: skip
    return out


def run_tasks(args, tasks: list[Task], seeds: list[int], shared: list, fine_tune) -> tuple:
    """Every target task's candidates (ImageNet, the checkpoints fine-tuned on the other
    tasks, random, hub) and their taus per seed: `(per_seed, details)`."""
    tuned = {
        t.name: Checkpoint(f"finetuned_on_{t.name}", *fine_tune(t), IMAGENET_TOP1["finetuned"])
        for t in tasks
    }
    per_seed = [{} for _ in seeds]
    details = {"tasks": {}, "per_seed": {str(s): {} for s in seeds}}
    for task in tasks:
        others = [tuned[t.name] for t in tasks if t.name != task.name]
        table = candidates_of(task, [shared[0], *others, *shared[1:]])
        details["tasks"][task.name] = {
            "images": len(task.labels),
            "classes": int(task.labels.max()) + 1,
            "candidates": {
                n: {k: c[k] for k in ("checkpoint", "depth", "imagenet_top1")}
                for n, c in table.items()
            },  # fmt: skip
        }
        for s, seed in enumerate(seeds):
            taus, numbers = seed_taus(task, table, seed)
            per_seed[s][task.name], details["per_seed"][str(seed)][task.name] = taus, numbers
            shown = ", ".join(f"{a} {taus[a]['kendall_tau']:+.3f}" for a in (*SCORES, *BASELINES))
            print(f"{task.name} seed {seed}: kendall tau {shown}", flush=True)
    return per_seed, details


def selection() -> dict:
    return {
        "tuned": "the linear probe's L2, per candidate, task and seed, from "
        f"{list(L2_GRID)} by validation accuracy. Fixed before the run, not tuned: the tasks, "
        f"the blocks {list(BLOCKS)}, the checkpoints and their fine-tuning recipe {FINE_TUNE}, "
        "the scores' settings (LogME defaults, Ledoit-Wolf shrinkage), the baselines' values "
        f"(depth = block index; ImageNet top-1 {IMAGENET_TOP1}, fine-tuned and random by the "
        "declared proxy). Split rule: per seed, assign_splits(keys, labels, "
        f"validation_split={SPLIT['validation_split']}, test_split={SPLIT['test_split']}, "
        "seed=seed) on every task; scores on the training split only.",
        "tuned_on": "validation",
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output", default=None, help="results JSON path")
    parser.add_argument("--cache_dir", default=None, help="fine-tuned checkpoints")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--per_class", type=int, default=200, help="cats_and_dogs subsample")
    parser.add_argument("--rotation_images", type=int, default=400)
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated split seeds")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    run = _common.start_run(selection(), script=__file__, argv=argv)
    if args.smoke:
        args.image_size, assets = 32, None
        tasks = smoke_tasks(args.image_size)
        weights, epochs = None, {"head_epochs": 1, "full_epochs": 1}
    else:
        assets = _common.assets_dir(args.assets, HUB_MODEL)
        tasks = real_tasks(assets, args.image_size, args.per_class, args.rotation_images)
        weights, epochs = str(assets / _common.MOBILENET_WEIGHTS), None
    cache = pathlib.Path(
        args.cache_dir
        or (
            tempfile.mkdtemp(prefix="keras_transfer_smoke_checkpoints_")
            if args.smoke
            else pathlib.Path(tempfile.gettempdir()) / "keras_transfer_bench_checkpoints"
        )
    )
    per_seed, details = run_tasks(args, tasks, seeds, shared_checkpoints(args, assets),
                                  lambda t: fine_tuned(t, args.image_size, weights, cache, epochs))  # fmt: skip
    names = [t.name for t in tasks]
    arms = results_arms(per_seed, names)
    details["verdict"] = verdict(arms)
    details["settings"] = {"image_size": args.image_size, "blocks": list(BLOCKS),
                           "fine_tune": dict(FINE_TUNE, **(epochs or {})), "cache_dir": str(cache)}  # fmt: skip
    first = details["per_seed"][str(seeds[0])]
    totals = {k: sum(first[t]["splits"][k] for t in names) for k in ("train", "validation", "test")}
    path = pathlib.Path(
        args.output
        or (
            pathlib.Path(tempfile.mkdtemp(prefix="transferability_smoke_")) / "transferability.json"
            if args.smoke
            else _common.REPO_ROOT / "benchmarks" / "results" / "transferability.json"
        )
    )
    record = _common.write_results(
        path,
        run,
        kind="ranking",
        benchmark="transferability",
        dataset="smoke" if args.smoke else "+".join(names),
        splits=totals,
        evaluated_on="test",
        arms=arms,
        primary_metric="kendall_tau",
        seeds=seeds,
        comparisons=[[s, b] for s in SCORES if s != "leep" for b in BASELINES],
        split_scheme="repeated_stratified",
        details=details,
    )
    print(f"wrote {path}")
    # The last line, as every benchmark's: the verdict as JSON.
    summary = {arm: record["arms"][arm]["kendall_tau"]["mean"] for arm in record["arms"]}
    print(json.dumps({"kendall_tau": summary, "verdict": details["verdict"]}))
    return record


if __name__ == "__main__":
    main()
