"""Step-time overhead of per-variable learning rates, measured in one process.

Compares, on the same model, data and initial weights (MobileNetV2 with `weights=None`
plus a linear head; `--backbone` picks another registered MobileNet, every variable trainable):
- `plain`: `keras.optimizers.AdamW` (one learning rate);
- `wrapper`: `keras_transfer.optimizers.layerwise.with_layerwise_lr(AdamW, ...)` with layer-wise
  decay over the backbone's blocks (head 1.0);
- `multioptimizer`: `keras.optimizers.MultiOptimizer` with one AdamW per block at
  `lr * multiplier` (the same numbers), the stock Keras way to get per-group rates;
- `plain_again`: a second plain model, an A/A control whose ratio to `plain` is the noise.
Then the same with one multiplier per layer (~100 groups).

Each variant's first `train_on_batch` (tracing; the optimizers are built before) is timed
on its own, `--trace-repeats` times in turn (forcing a new trace; the minimum is kept); after
warm-up, the
variants run in interleaved rounds (order rotated each round) so that machine load drifts
hit all of them alike; a ratio is the median over rounds of the paired per-step times.
`max_abs_diff_vs_reference` is the largest weight difference between the wrapper and the
MultiOptimizer after applying the same 3 gradient sets to the same initial weights (they
implement the same maths). Weights after the timed training steps are not compared: with
Adam, float round-off in near-zero gradients of a randomly initialised network grows to
differences of the order of the learning rate within a few steps, for any two programs.

The last line printed is one JSON object. The full run also writes
benchmarks/results/optimizer_overhead.json (or `--output`; `--smoke` writes only with
`--output`) in the results schema of `_common.write_results` (kind "timing"): one arm per
grouping and variant (`blocks/wrapper`, ...), each round's step time, and the per-round
ratios the summary's medians come from.

    python benchmarks/optimizer_overhead.py            # the full run (a few minutes)
    python benchmarks/optimizer_overhead.py --smoke    # seconds, checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transfer.backbones import registry as backbones  # noqa: E402
from keras_transfer.optimizers import layerwise as optimizers  # noqa: E402

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.01


def build_model(args, num_classes: int = 10) -> keras.Model:
    size = args.image_size
    backbone = backbones.create_backbone(
        args.backbone, input_shape=(size, size, 3), weights=None, alpha=args.alpha
    )
    inputs = keras.Input((size, size, 3))
    features = backbone.model(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(pooled)
    return keras.Model(inputs, outputs, name="classifier")


def per_layer_multipliers(model: keras.Model, decay: float) -> dict[str, float]:
    """One pattern per backbone layer with weights, `decay ** (layers above it + 1)`."""
    layer_paths = []
    for variable in model.trainable_variables:
        layer_path = variable.path.rsplit("/", 1)[0]
        if not layer_path.startswith("predictions") and layer_path not in layer_paths:
            layer_paths.append(layer_path)
    n = len(layer_paths)
    return {f"^{re.escape(p)}/[^/]+$": decay ** (n - i) for i, p in enumerate(layer_paths)}


def multioptimizer(multipliers: dict[str, float]) -> keras.optimizers.MultiOptimizer:
    optimizer_map = keras.optimizers.OptimizerMap(
        default_optimizer=keras.optimizers.AdamW(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    )
    for pattern, multiplier in multipliers.items():
        # OptimizerMap full-matches its keys; the patterns are anchored at both ends.
        optimizer_map[pattern] = keras.optimizers.AdamW(
            LEARNING_RATE * multiplier, weight_decay=WEIGHT_DECAY
        )
    return keras.optimizers.MultiOptimizer(optimizer_map)


def reference_diff(models: dict, x, y, initial: list, steps: int = 3) -> float:
    """Max |wrapper - MultiOptimizer| after applying the same gradients `steps` times."""
    model = models["plain"]
    with tf.GradientTape() as tape:
        predictions = model(x, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, predictions))
    grads = tape.gradient(loss, model.trainable_variables)
    model.set_weights(initial)
    for other in models.values():
        other.optimizer.build(other.trainable_variables)
    for name in ("wrapper", "multioptimizer"):
        for _ in range(steps):
            models[name].optimizer.apply(grads, models[name].trainable_variables)
    diff = max(
        float(np.max(np.abs(w - r)))
        for w, r in zip(
            models["wrapper"].get_weights(), models["multioptimizer"].get_weights(), strict=True
        )
    )
    for model in models.values():
        model.set_weights(initial)
    return diff


def compare(args, multipliers_of, label: str) -> dict:
    """Times plain / wrapper / MultiOptimizer with the multipliers `multipliers_of(model)`."""
    keras.utils.set_random_seed(0)
    reference = build_model(args)
    initial = reference.get_weights()
    multipliers = multipliers_of(reference)
    makers = {
        "plain": lambda: keras.optimizers.AdamW(LEARNING_RATE, weight_decay=WEIGHT_DECAY),
        "wrapper": lambda: optimizers.with_layerwise_lr(
            keras.optimizers.AdamW,
            multipliers,
            learning_rate=LEARNING_RATE,
            weight_decay=WEIGHT_DECAY,
        ),
        "multioptimizer": lambda: multioptimizer(multipliers),
        # A/A control: a second plain model; its ratio to `plain` shows the timing noise.
        "plain_again": lambda: keras.optimizers.AdamW(LEARNING_RATE, weight_decay=WEIGHT_DECAY),
    }
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (args.batch_size, args.image_size, args.image_size, 3))
    x = x.astype("float32")
    y = rng.integers(0, 10, args.batch_size)
    models, trace = {}, {}
    for name, make in makers.items():
        model = reference if name == "plain" else build_model(args)
        model.set_weights(initial)
        model.compile(
            optimizer=make(), loss="sparse_categorical_crossentropy", run_eagerly=args.run_eagerly
        )
        models[name] = model
    # Builds the optimizers (eagerly), so that no first step below includes creating slots.
    diff = reference_diff(models, x, y, initial)
    for _ in range(args.trace_repeats):
        for name, model in models.items():
            model.make_train_function(force=True)
            start = time.perf_counter()
            model.train_on_batch(x, y)
            elapsed = time.perf_counter() - start
            trace[name] = min(trace.get(name, elapsed), elapsed)
    for model in models.values():
        for _ in range(args.warmup):
            model.train_on_batch(x, y)
    names = list(models)
    per_step = {name: [] for name in names}
    cpu_per_step = {name: [] for name in names}
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                models[name].train_on_batch(x, y)
            per_step[name].append((time.perf_counter() - start) / args.steps)
            cpu_per_step[name].append((time.process_time() - cpu_start) / args.steps)

    def ratio(a: str, b: str, times=per_step) -> float:
        return statistics.median(p / q for p, q in zip(times[a], times[b], strict=True))

    result = {
        "groups": len(multipliers) + 1,  # + the head at the default multiplier
        "wrapper_vs_plain": round(ratio("wrapper", "plain"), 4),
        "multioptimizer_vs_wrapper": round(ratio("multioptimizer", "wrapper"), 4),
        # CPU time of this process: less sensitive than wall time to other processes' load.
        "cpu_wrapper_vs_plain": round(ratio("wrapper", "plain", cpu_per_step), 4),
        "cpu_multioptimizer_vs_wrapper": round(ratio("multioptimizer", "wrapper", cpu_per_step), 4),
        "noise_plain_again_vs_plain": round(ratio("plain_again", "plain"), 4),
        "cpu_noise_plain_again_vs_plain": round(ratio("plain_again", "plain", cpu_per_step), 4),
        "trace_wrapper_vs_plain": round(trace["wrapper"] / trace["plain"], 4),
        "trace_multioptimizer_vs_wrapper": round(trace["multioptimizer"] / trace["wrapper"], 4),
        "trace_seconds": {k: round(v, 3) for k, v in trace.items()},
        "step_ms_median": {k: round(1000 * statistics.median(v), 2) for k, v in per_step.items()},
        "max_abs_diff_vs_reference": diff,
        "per_round_step_ms": {k: [1000 * t for t in v] for k, v in per_step.items()},
        "per_round_cpu_step_ms": {k: [1000 * t for t in v] for k, v in cpu_per_step.items()},
    }
    print(f"[{label}] {json.dumps(result)}", flush=True)
    return result


SELECTION = {
    "tuned": "nothing: model, batch, rounds, steps and the decay are fixed flags",
    "tuned_on": None,
    "pairing": "round r times every variant back to back on the same model, data and "
    "initial weights, the order rotated by r; a ratio is taken within a round "
    "(plain_again / plain is the A/A control)",
}
RATIOS = {"wrapper": "plain", "multioptimizer": "wrapper", "plain_again": "plain"}


def results_arms(by_grouping: dict) -> dict:
    """`{arm: {metric: [one value per round]}}` from `compare`'s results by grouping: arms
    `<grouping>/<variant>` with the step time (wall, CPU) and, for the compared variants,
    the per-round ratio to their reference (`wrapper` over `plain`, ...)."""
    arms = {}
    for grouping, result in by_grouping.items():
        wall, cpu = result["per_round_step_ms"], result["per_round_cpu_step_ms"]
        for variant in wall:
            arm = {"step_ms": wall[variant], "cpu_step_ms": cpu[variant]}
            reference = RATIOS.get(variant)
            if reference is not None:
                arm[f"ratio_vs_{reference}"] = [
                    a / b for a, b in zip(wall[variant], wall[reference], strict=True)
                ]
                arm[f"cpu_ratio_vs_{reference}"] = [
                    a / b for a, b in zip(cpu[variant], cpu[reference], strict=True)
                ]
            arms[f"{grouping}/{variant}"] = arm
    return arms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNet width")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument(
        "--trace-repeats", type=int, default=2, help="first-step timings per variant (min kept)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after tracing")
    parser.add_argument("--decay", type=float, default=0.7, help="layer-wise decay per block")
    parser.add_argument("--run-eagerly", action="store_true", help="no tf.function (debugging)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny, eager: checks the script runs, times nothing"
    )
    parser.add_argument("--output", default=None, help="results file (full run: the default)")
    args = parser.parse_args()
    run = _common.start_run(SELECTION, script=__file__)
    if args.smoke:
        # MobileNet V1 traces several times faster than V2: the smoke run takes seconds.
        args.backbone, args.image_size, args.alpha, args.batch_size = "mobilenet", 32, 0.25, 2
        args.rounds, args.steps, args.warmup, args.run_eagerly = 2, 1, 0, True
        args.trace_repeats = 1

    def blocks(model):
        return optimizers.layer_decay_multipliers(model, args.decay)

    def layers(model):
        return per_layer_multipliers(model, 0.97)

    start = time.perf_counter()
    block_result = compare(args, blocks, "per block")
    layer_result = compare(args, layers, "per layer")
    summary = {
        **{k: block_result[k] for k in ("wrapper_vs_plain", "multioptimizer_vs_wrapper")},
        "groups": block_result["groups"],
        "trace_wrapper_vs_plain": block_result["trace_wrapper_vs_plain"],
        "max_abs_diff_vs_reference": max(
            block_result["max_abs_diff_vs_reference"], layer_result["max_abs_diff_vs_reference"]
        ),
        "per_block": block_result,
        "per_layer": layer_result,
        "config": {
            "model": f"{args.backbone}(alpha={args.alpha}, weights=None) + Dense head",
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "trace_repeats": args.trace_repeats,
            "run_eagerly": args.run_eagerly,
            "seconds": round(time.perf_counter() - start, 1),
        },
    }
    output = args.output or (
        None
        if args.smoke
        else _common.REPO_ROOT / "benchmarks" / "results" / "optimizer_overhead.json"
    )
    if output is not None:
        _common.write_results(
            pathlib.Path(output),
            run,
            kind="timing",
            benchmark="optimizer_overhead",
            dataset="synthetic",
            splits={"train": args.batch_size},
            evaluated_on="train",
            repeats=args.rounds,
            arms=results_arms({"blocks": block_result, "layers": layer_result}),
            primary_metric="step_ms",
            comparisons=[
                [f"{grouping}/{variant}", f"{grouping}/{reference}"]
                for grouping in ("blocks", "layers")
                for variant, reference in RATIOS.items()
            ],
            details=summary,
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
