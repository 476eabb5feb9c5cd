"""The main job on Keras' TensorFlow and JAX backends, on this CPU: step time and accuracy.

Two measurements, each backend in processes of its own (`KERAS_BACKEND` is read once, when
Keras is imported):

- **Step time.** One fine-tuning step of the main job's model: MobileNet 1.0 at 224 px with
  the shared ImageNet weights, the top 7 of 14 blocks trainable with BatchNorm frozen (the
  plan the main job runs on ants vs bees), Adam, batch 32 of fixed images, each backend with
  the package's `jit_compile` choice (`distribute.default_jit_compile`: no XLA on TensorFlow
  on CPU, jit on JAX). A fresh process per backend and round builds the model, runs 3 warm-up
  steps and times `--steps` more; its median step is the round's value. Pairing (stated in
  the results file before the run): round r runs both backends back to back, TensorFlow
  first in even rounds and JAX first in odd ones; the ratio `jax_vs_tf` is taken within a
  round, and the reported value is the median over rounds.
- **Accuracy.** The main job as the README runs it (`keras-transfer train` on ants vs bees
  with the shared weights, plan `auto`) plus `--test_split=0.2` and `--seed=s`, for each seed
  and backend. Everything the run chooses (plan, epochs, kept weights) reads the validation
  split; the test split is read once, at the end, by the command.

    python benchmarks/backends.py               # about 40 min at 5 seeds and 5 rounds
    python benchmarks/backends.py --smoke       # about 3 min: synthetic data, weights=None
    python benchmarks/backends.py --measure=accuracy --test_on=val_folder --seeds 15 \
        --same_seed_reruns 2   # 15 paired seeds and seed 0 twice more per backend
    python benchmarks/backends.py --measure=accuracy --test_on=val_folder
        # accuracy only, every seed tested on the dataset's 153-image val/ folder (train on
        # train/ with a 20% validation split): writes backends_accuracy_fixed_test.json

Writes `benchmarks/results/backends_step.json` (kind "timing") and
`benchmarks/results/backends_accuracy.json` (kind "accuracy") through `_common.write_results`;
the last line printed is `{tf_step_s, jax_step_s, jax_vs_tf, tf_accuracy, jax_accuracy}`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

BACKENDS = ("tensorflow", "jax")
WEIGHTS = "weights/mobilenet_1_0_224_tf_no_top.h5"
DATA = "datasets/hymenoptera_data"
PAIRING = (
    "step: round r runs both backends back to back in fresh processes, TensorFlow first in "
    "even rounds and JAX first in odd ones; a process's value is its median timed step; "
    "jax_vs_tf is the ratio within a round, reported as the median over rounds. accuracy: "
    "seed s runs both backends back to back on the same splits (TensorFlow first on even "
    "seeds); the verdict is the per-seed JAX-minus-TensorFlow test accuracy. same-seed "
    "reruns (--same_seed_reruns K): seed 0 again K times per backend, alternating which "
    "backend goes first, kept out of the paired arms"
)
VERDICT = (
    "JAX matches TensorFlow when the mean paired JAX-minus-TensorFlow test accuracy over the "
    "seeds lies within 1 point (|mean| <= 0.01); its 95% interval and every seed's difference "
    "are reported beside it, and the same-seed reruns give the noise floor of one run"
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="accuracy seeds per backend")
    parser.add_argument("--rounds", type=int, default=5, help="paired step-time rounds")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    parser.add_argument("--test_split", type=float, default=0.2)
    parser.add_argument(
        "--measure",
        choices=("both", "step", "accuracy"),
        default="both",
        help="which arm to run (each writes its own results file)",
    )
    parser.add_argument(
        "--test_on",
        choices=("split", "val_folder"),
        default="split",
        help="split: --test_split of train/ per seed; val_folder: train on train/ with "
        "--validation_split=0.2 and test every seed on the dataset's val/ folder (153 "
        "images shared by all seeds: finer paired differences)",
    )
    parser.add_argument(
        "--same_seed_reruns",
        type=int,
        default=0,
        help="after the paired seeds, run seed 0 this many more times on each backend: the "
        "spread of one seed's test accuracy across identical runs (the noise floor)",
    )
    parser.add_argument("--assets", help="the shared assets folder (default ../shared/assets)")
    parser.add_argument("--output", help="folder for the results files")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic run")
    parser.add_argument("--worker_step", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--image_size", type=int, default=224, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.rounds, args.steps = min(args.seeds, 2), min(args.rounds, 2), 2
    return args


# -- the step-time worker (runs in the subprocess, on the backend its environment names) ----


def worker_step(args: argparse.Namespace) -> None:
    """Prints `{"backend", "step_seconds", "jit_compile"}` for one process's timed steps."""
    import keras
    import numpy as np

    import keras_transfer as kt
    from keras_transfer.utils import distribute

    keras.utils.set_random_seed(0)
    size = args.image_size
    model = kt.create_classifier(
        "mobilenet", 2, input_shape=(size, size, 3), weights=args.weights or None
    )
    kt.freeze(model)
    kt.unfreeze(model, 7)
    jit_compile = distribute.default_jit_compile(None, model)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-5),
        loss="sparse_categorical_crossentropy",
        jit_compile=jit_compile,
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (32, size, size, 3)).astype("float32")
    labels = rng.integers(0, 2, 32)
    for _ in range(3):
        model.train_on_batch(images, labels)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        model.train_on_batch(images, labels)
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "backend": keras.backend.backend(),
                "step_seconds": statistics.median(times),
                "jit_compile": jit_compile,
            }
        )
    )


def _environment(backend: str) -> dict:
    return dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")


def step_round(args: argparse.Namespace, round_index: int, weights: str | None) -> dict:
    order = BACKENDS if round_index % 2 == 0 else BACKENDS[::-1]
    values = {}
    for backend in order:
        command = [sys.executable, __file__, "--worker_step", "--steps", str(args.steps)]
        command += ["--image_size", str(args.image_size)]
        command += ["--weights", weights] if weights else []
        done = subprocess.run(
            command, env=_environment(backend), capture_output=True, text=True, check=False
        )
        if done.returncode:
            raise RuntimeError(f"{backend} step worker failed:\n{done.stderr[-3000:]}")
        values[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = values["jax"]["step_seconds"] / values["tensorflow"]["step_seconds"]
    print(f"round {round_index}: {values} jax/tf {ratio:.3f}", flush=True)
    return {"order": list(order), **values, "ratio_jax_vs_tf": ratio}


# -- accuracy: the command itself -----------------------------------------------------------


def train_run(args, backend: str, seed: int, data: pathlib.Path, weights, work) -> dict:
    model_dir = pathlib.Path(work) / f"{backend}_seed{seed}"
    command = [
        _command_path(),
        "train",
        "--backbone=mobilenet",
        f"--weights={weights or 'none'}",
        f"--model_dir={model_dir}",
        f"--seed={seed}",
        *_data_flags(args, data),
    ]
    if args.smoke:
        command += ["--image_size=32", "--batch_size=4", "--head_epochs=1"]
        command += ["--fine_tune_epochs=1", "--plan=fixed", "--unfreeze_blocks=2"]
    start = time.perf_counter()
    done = subprocess.run(command, env=_environment(backend), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed on {backend}:\n{done.stderr[-3000:]}")
    results = json.loads((model_dir / "results.json").read_text())
    record = {
        "test_accuracy": results["test"]["accuracy"],
        "validation_accuracy": results["saved_model_val_accuracy"],
        "seconds": round(time.perf_counter() - start, 1),
        "backend": results["backend"],
        "splits": {
            "train": results["num_train"],
            "validation": results["num_validation"],
            "test": results["num_test"],
        },
        "plan": results.get("plan", {}).get("summary") if results.get("plan") else None,
    }
    print(f"{backend} seed {seed}: {record}", flush=True)
    return record


def _data_flags(args, data: pathlib.Path) -> list[str]:
    if args.test_on == "split":
        return [f"--data_dir={data}", f"--test_split={args.test_split}"]
    held_out = _common.held_out_folder(data)
    return [f"--data_dir={data / 'train'}", "--validation_split=0.2", f"--test_dir={held_out}"]


def _command_path() -> str:
    """The `keras-transfer` beside this interpreter (its venv), else the one on PATH."""
    beside = pathlib.Path(sys.executable).with_name("keras-transfer")
    return str(beside) if beside.exists() else "keras-transfer"


def measure(args: argparse.Namespace) -> tuple[list[dict], dict[str, list[dict]], dict]:
    """The step rounds, the paired runs per backend and the same-seed reruns per backend."""
    if args.smoke:
        data, weights = _common.smoke_image_folder(per_class=8), None
        args.image_size = 32
    else:
        assets = _common.assets_dir(args.assets, WEIGHTS)
        data, weights = assets / DATA, str(assets / WEIGHTS)
    rounds = []
    if args.measure in ("both", "step"):
        rounds = [step_round(args, r, weights) for r in range(args.rounds)]
    runs: dict[str, list[dict]] = {backend: [] for backend in BACKENDS}
    seeds = range(args.seeds) if args.measure in ("both", "accuracy") else ()
    with tempfile.TemporaryDirectory(prefix="backends_") as work:
        for seed in seeds:
            for backend in BACKENDS if seed % 2 == 0 else BACKENDS[::-1]:
                runs[backend].append(train_run(args, backend, seed, data, weights, work))
        reruns = same_seed_reruns(args, data, weights, work)
    return rounds, runs, reruns


def same_seed_reruns(args, data: pathlib.Path, weights, work) -> dict[str, list[dict]]:
    """Seed 0 again `--same_seed_reruns` times per backend: what one run's noise is."""
    reruns: dict[str, list[dict]] = {backend: [] for backend in BACKENDS}
    for repeat in range(args.same_seed_reruns if args.measure != "step" else 0):
        for backend in BACKENDS if repeat % 2 else BACKENDS[::-1]:
            rerun_dir = pathlib.Path(work) / f"rerun{repeat}"
            reruns[backend].append(train_run(args, backend, 0, data, weights, rerun_dir))
    return reruns


def write(args, run, rounds, runs, reruns) -> dict:
    summary = dict.fromkeys(("tf_step_s", "jax_step_s", "jax_vs_tf"))
    if rounds:
        summary.update(write_step(args, run, rounds))
    summary.update(tf_accuracy=None, jax_accuracy=None)
    if runs["tensorflow"]:
        summary.update(write_accuracy(args, run, runs, reruns))
    return summary


def _settings(args) -> dict:
    return {**vars(args), "assets": None, "weights": None}


def write_step(args, run, rounds) -> dict:
    _common.write_results(
        _common.results_path(args.output, args.smoke, "backends_step"),
        run,
        kind="timing",
        benchmark="backends_step",
        dataset="synthetic" if args.smoke else "hymenoptera",
        splits={"train": 32},
        evaluated_on="train",
        repeats=args.rounds,
        arms={
            "tensorflow": {"step_seconds": [r["tensorflow"]["step_seconds"] for r in rounds]},
            "jax": {
                "step_seconds": [r["jax"]["step_seconds"] for r in rounds],
                "ratio_jax_vs_tf": [r["ratio_jax_vs_tf"] for r in rounds],
            },
        },
        primary_metric="step_seconds",
        comparisons=[["jax", "tensorflow"]],
        details={"rounds": rounds, "settings": _settings(args)},
    )
    return {
        "tf_step_s": statistics.median(r["tensorflow"]["step_seconds"] for r in rounds),
        "jax_step_s": statistics.median(r["jax"]["step_seconds"] for r in rounds),
        "jax_vs_tf": statistics.median(r["ratio_jax_vs_tf"] for r in rounds),
    }


def write_accuracy(args, run, runs, reruns) -> dict:
    arms = {
        backend: {
            metric: [r[metric] for r in records]
            for metric in ("test_accuracy", "validation_accuracy", "seconds")
        }
        for backend, records in runs.items()
    }
    # The verdict's quantity: JAX minus TensorFlow on the same seed and the same test images.
    arms["jax"]["test_accuracy_minus_tensorflow"] = [
        j - t for j, t in zip(arms["jax"]["test_accuracy"], arms["tensorflow"]["test_accuracy"])
    ]
    fixed_test = args.test_on == "val_folder"
    name = "backends_accuracy_fixed_test" if fixed_test else "backends_accuracy"
    _common.write_results(
        _common.results_path(args.output, args.smoke, name),
        run,
        kind="accuracy",
        benchmark=name,
        dataset="synthetic" if args.smoke else "hymenoptera",
        splits=runs["tensorflow"][0]["splits"],
        evaluated_on="test",
        # split: --test_split holds out a seed-dependent stratified part of train/, each seed
        # its own test images (`splits` are seed 0's; every seed's are in details.runs).
        # val_folder: the dataset's val/ folder is every seed's test set; validation is a
        # seed-dependent 20% of train/. Either way both backends share a seed's images, so
        # the arms are paired by seed.
        split_scheme="fixed" if fixed_test else "repeated_stratified",
        seeds=list(range(args.seeds)),
        arms=arms,
        primary_metric="test_accuracy",
        comparisons=[["jax", "tensorflow"]],
        details={
            "runs": runs,
            "same_seed_reruns": _rerun_summary(runs, reruns),
            "settings": _settings(args),
        },
    )
    return {
        "tf_accuracy": statistics.fmean(arms["tensorflow"]["test_accuracy"]),
        "jax_accuracy": statistics.fmean(arms["jax"]["test_accuracy"]),
    }


def _rerun_summary(runs: dict[str, list[dict]], reruns: dict[str, list[dict]]) -> dict:
    """Per backend: seed 0's test accuracy in the paired run and in every rerun, and its range."""
    summary = {}
    for backend, records in reruns.items():
        if not records:
            continue
        accuracies = [runs[backend][0]["test_accuracy"], *(r["test_accuracy"] for r in records)]
        summary[backend] = {
            "seed": 0,
            "test_accuracy": accuracies,
            "range": max(accuracies) - min(accuracies),
            "runs": records,
        }
    return summary


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker_step:
        worker_step(args)
        return {}
    run = _common.start_run(
        {
            "tuned": "nothing: the step arm uses fixed settings; the accuracy arm runs the "
            "main job, whose plan, epochs and kept weights read the validation split only; "
            "the test split is read once per run",
            "tuned_on": "validation",
            "pairing": PAIRING,
            "verdict": VERDICT,
        },
        script=__file__,
        argv=argv,
    )
    rounds, runs, reruns = measure(args)
    summary = write(args, run, rounds, runs, reruns)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
