"""A GPU check, ready to run on a machine with one GPU: no network, ~8 minutes at most.

Uses only the shared assets (MobileNet V1 ImageNet weights, the hub SavedModel, ants-vs-bees)
and synthetic in-memory batches; prints one JSON line:

- `mixed_vs_fp32`: fine-tuning images/s under `mixed_float16` over float32 (MobileNet V1,
  224 px, every block trainable; expected >= 1.5 on a GPU with tensor cores);
- `jit_vs_nojit`: fine-tuning images/s with `jit_compile=True` over `False` (float32);
- `optimizers`: at 20 and 100 learning-rate groups (MobileNetV2, contiguous groups of
  layers), with `jit_compile=True`: `keras_transfer.optimizers.layerwise.with_layerwise_lr` vs a
  plain AdamW and vs `keras.optimizers.MultiOptimizer` (one AdamW per group; Keras 3.15
  ships it; when a Keras has none the JSON says so and only plain is compared);
- `hub`: the hub SavedModel backbone fine-tuned with `jit_compile=True` under
  `mixed_float16` vs float32 without jit;
- `example`: the image classifier example's `run` end to end on ants-vs-bees with
  `mixed_precision=True` (seconds, validation accuracy, the policy it chose).

Each timed arm runs warm-up steps first (tracing, XLA compilation), then interleaved rounds
of `--steps` steps; medians. Every arm records evidence that it ran as described (the
compute dtype of its layers, its `jit_compile`, its optimizer class, a finite loss).

    python benchmarks/gpu_check.py              # on a GPU machine (exits on a CPU-only one)
    python benchmarks/gpu_check.py --smoke      # CPU, tiny sizes, < 2 minutes: checks it runs

The last line printed is one JSON object (also written to benchmarks/results/gpu_check.json,
except with --smoke).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
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
from keras_transfer.backbones import registry as backbones  # noqa: E402
from keras_transfer.optimizers import layerwise as optimizers  # noqa: E402

HUB_MODEL = "tfhub/mobilenet_v1_100_224_feature_vector"
LOSS = "sparse_categorical_crossentropy"


def example_module():
    """The image classifier example's library, wherever this checkout keeps it."""
    # Only this checkout's: an editable install elsewhere could also answer the import.
    if (_common.REPO_ROOT / "keras_transfer" / "apps" / "image_classifier.py").exists():
        from keras_transfer.apps import image_classifier  # moved into the package

        return image_classifier
    sys.path.insert(0, str(_common.REPO_ROOT / "examples"))
    import image_classifier_lib

    return image_classifier_lib


# --- timing ------------------------------------------------------------------------------


class Arm:
    """A compiled model and one fixed batch; `step()` runs one training step."""

    def __init__(self, model: keras.Model, x, y, **evidence):
        self.model, self.x, self.y = model, x, y
        self.times: list[float] = []
        self.losses: list[float] = []
        self.evidence = evidence

    def warm_up(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.model.train_on_batch(self.x, self.y)
        return time.perf_counter() - start

    def timed(self, steps: int) -> None:
        start = time.perf_counter()
        for _ in range(steps):
            loss = self.model.train_on_batch(self.x, self.y)
        # train_on_batch returns numpy: the device has finished the steps.
        self.times.append((time.perf_counter() - start) / steps)
        self.losses.append(float(np.ravel(loss)[0]))

    def images_per_second(self) -> float:
        return len(self.x) / statistics.median(self.times)


def race(arms: dict[str, Arm], args) -> dict[str, dict]:
    warmups = {name: arm.warm_up(args.warmup) for name, arm in arms.items()}
    names = list(arms)
    for round_index in range(args.rounds):
        for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
            arms[name].timed(args.steps)
    return {
        name: {
            "images_per_second": round(arm.images_per_second(), 2),
            "step_ms": [round(1000 * t, 2) for t in arm.times],
            "warmup_seconds": round(warmups[name], 2),
            "loss_finite": all(math.isfinite(v) for v in arm.losses),
            **arm.evidence,
        }
        for name, arm in arms.items()
    }


def batch(args, size, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (args.batch_size, size, size, 3)).astype("float32")
    return x, (np.arange(args.batch_size) % classes).astype("int32")


def compute_dtypes(model: keras.Model) -> list[str]:
    return sorted(
        {layer.dtype_policy.compute_dtype for layer in model.backbone.layers if layer.weights}
    )


def variable_dtypes(model: keras.Model) -> list[str]:
    return sorted({v.dtype for v in model.trainable_variables})


def classifier(backbone_name, size, weights, policy, **extra):
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        if weights is not None:
            extra = {**extra, "weights": weights}
        elif not backbone_name.startswith("hub:"):
            extra = {**extra, "weights": None}
        backbone = kt.create_backbone(backbone_name, input_shape=(size, size, 3), **extra)
        model = kt.create_classifier(backbone, 2, head={"dropout": 0.0})
    finally:
        keras.config.set_dtype_policy(previous)
    kt.unfreeze(model, "all")
    return model


def fine_tune_arm(model, args, size, jit_compile, optimizer=None, **evidence):
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(1e-5),
        loss=LOSS,
        jit_compile=jit_compile,
    )
    x, y = batch(args, size)
    return Arm(
        model,
        x,
        y,
        jit_compile=bool(model.jit_compile),
        compute_dtypes=compute_dtypes(model),
        variable_dtypes=variable_dtypes(model),
        optimizer=type(model.optimizer).__name__,
        **evidence,
    )


# --- the checks --------------------------------------------------------------------------


def precision_and_jit(args, weights, extra) -> dict:
    size = args.image_size
    arms = {
        "float32_jit": fine_tune_arm(
            classifier("mobilenet", size, weights, "float32", **extra), args, size, True
        ),
        "mixed_float16_jit": fine_tune_arm(
            classifier("mobilenet", size, weights, "mixed_float16", **extra), args, size, True
        ),
        "float32_nojit": fine_tune_arm(
            classifier("mobilenet", size, weights, "float32", **extra), args, size, False
        ),
    }
    results = race(arms, args)
    rate = {name: r["images_per_second"] for name, r in results.items()}
    return {
        "mixed_vs_fp32": round(rate["mixed_float16_jit"] / rate["float32_jit"], 3),
        "jit_vs_nojit": round(rate["float32_jit"] / rate["float32_nojit"], 3),
        "arms": results,
    }


def layer_groups(model: keras.Model, groups: int) -> dict[str, float]:
    """`groups - 1` contiguous groups of the backbone's layers with weights (the head is the
    last group, at the default multiplier), as anchored regexes over variable paths."""
    layer_paths = []
    for variable in model.trainable_variables:
        layer_path = variable.path.rsplit("/", 1)[0]
        if not layer_path.startswith("predictions") and layer_path not in layer_paths:
            layer_paths.append(layer_path)
    chunks = np.array_split(np.arange(len(layer_paths)), min(groups - 1, len(layer_paths)))
    return {
        "^(" + "|".join(re.escape(layer_paths[i]) for i in chunk) + ")/[^/]+$": 0.9 ** (k + 1)
        for k, chunk in enumerate(reversed(chunks))
    }


def optimizer_model(args, size):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    if args.smoke:
        # 110 small Dense layers: enough layers for 100 groups, traced in seconds.
        x = keras.layers.GlobalAveragePooling2D()(inputs)
        for i in range(110):
            x = keras.layers.Dense(8, activation="relu", name=f"dense_{i}")(x)
    else:
        backbone = backbones.create_backbone(
            "mobilenet_v2", input_shape=(size, size, 3), weights=None, alpha=args.optimizer_alpha
        )
        x = keras.layers.GlobalAveragePooling2D()(backbone.model(inputs))
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs)


def optimizer_check(args) -> dict:
    size = args.optimizer_image_size
    has_multi = hasattr(keras.optimizers, "MultiOptimizer")
    out = {
        "keras_version": keras.version(),
        "keras_has_multioptimizer": has_multi,
    }
    if not has_multi:
        out["note"] = (
            f"Keras {keras.version()} has no keras.optimizers.MultiOptimizer: the wrapper is "
            "compared to the plain optimizer only."
        )
    x, y = batch(args, size)
    for groups in (20, 100):
        reference = optimizer_model(args, size)
        initial = reference.get_weights()
        multipliers = layer_groups(reference, groups)
        makers = {
            "plain": lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.01),
            "wrapper": lambda m=multipliers: optimizers.with_layerwise_lr(
                keras.optimizers.AdamW, m, learning_rate=1e-3, weight_decay=0.01
            ),
        }
        if has_multi:

            def multi(m=multipliers):
                optimizer_map = keras.optimizers.OptimizerMap(
                    default_optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.01)
                )
                for pattern, multiplier in m.items():
                    optimizer_map[pattern] = keras.optimizers.AdamW(
                        1e-3 * multiplier, weight_decay=0.01
                    )
                return keras.optimizers.MultiOptimizer(optimizer_map)

            makers["multioptimizer"] = multi
        arms = {}
        for name, make in makers.items():
            model = reference if name == "plain" else optimizer_model(args, size)
            model.set_weights(initial)
            # --smoke checks the code path eagerly: tracing (let alone compiling with XLA) 6
            # models with up to 100 optimizers took over 15 minutes on a loaded 2-core CPU.
            model.compile(
                optimizer=make(), loss=LOSS, jit_compile=not args.smoke, run_eagerly=args.smoke
            )
            arms[name] = Arm(
                model,
                x,
                y,
                jit_compile=bool(model.jit_compile),
                optimizer=type(model.optimizer).__name__,
            )
        results = race(arms, args)
        rate = {name: r["images_per_second"] for name, r in results.items()}
        entry = {
            "groups": len(multipliers) + 1,
            "wrapper_vs_plain": round(rate["wrapper"] / rate["plain"], 3),
            "arms": results,
        }
        if has_multi:
            entry["wrapper_vs_multioptimizer"] = round(rate["wrapper"] / rate["multioptimizer"], 3)
        out[f"groups_{groups}"] = entry
    return out


class _TinyImageModule(tf.Module):
    def __init__(self):
        super().__init__()
        self.kernel = tf.Variable(
            np.random.default_rng(0).normal(0, 0.1, (3, 3, 3, 16)).astype("float32"),
            name="conv/kernel",
        )

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        features = tf.nn.relu(tf.nn.conv2d(images, self.kernel, 2, "SAME"))
        return tf.reduce_mean(features, axis=[1, 2])


def export_tiny_image_module(path: pathlib.Path) -> str:
    """A tiny image SavedModel for --smoke: [batch, H, W, 3] in [0, 1] -> [batch, 16]."""
    tf.saved_model.save(_TinyImageModule(), str(path))
    return str(path)


def hub_check(args, hub_path: str) -> dict:
    size = args.image_size
    arms = {}
    for name, policy, jit in (
        ("mixed_float16_jit", "mixed_float16", True),
        ("float32_nojit", "float32", False),
    ):
        model = classifier(f"hub:{hub_path}", size, None, policy)
        arms[name] = fine_tune_arm(model, args, size, jit)
    results = race(arms, args)
    rate = {name: r["images_per_second"] for name, r in results.items()}
    return {
        "handle": hub_path,
        "mixed_jit_vs_fp32_nojit": round(rate["mixed_float16_jit"] / rate["float32_nojit"], 3),
        "arms": results,
    }


def example_check(args, data_dir, weights) -> dict:
    lib = example_module()
    model_dir = tempfile.mkdtemp(prefix="keras_transfer_gpu_check_example_")
    try:
        config = lib.Config(
            data_dir=str(data_dir),
            model_dir=model_dir,
            backbone="mobilenet",
            weights=weights or "none",
            image_size=args.example_image_size,
            batch_size=args.batch_size,
            head_epochs=args.example_head_epochs,
            fine_tune_epochs=args.example_fine_tune_epochs,
            mixed_precision=True,
            verbose=0,
            seed=0,
        )
        start = time.perf_counter()
        results = lib.run(config)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    return {
        "seconds": round(seconds, 1),
        "val_accuracy": results.get("saved_model_val_accuracy"),
        "dtype_policy": results["dtype_policy"],
        "num_train": results["num_train"],
        "num_validation": results["num_validation"],
        "phase_seconds": {
            phase: (results.get(phase) or {}).get("seconds")
            for phase in ("feature_extraction", "fine_tune")
        },
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per arm")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--optimizer_image_size", type=int, default=160)
    parser.add_argument("--optimizer_alpha", type=float, default=1.0)
    parser.add_argument("--example_image_size", type=int, default=224)
    parser.add_argument("--example_head_epochs", type=int, default=10)
    parser.add_argument("--example_fine_tune_epochs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks it runs")
    args = parser.parse_args(argv)
    gpus = tf.config.list_physical_devices("GPU")
    if not args.smoke and not gpus:
        raise SystemExit(
            "gpu_check.py needs a GPU and TensorFlow sees none (tf.config.list_physical_devices"
            "('GPU') is empty). Run it on a GPU machine with a CUDA build of TensorFlow, or "
            "pass --smoke to check the script on a CPU with tiny sizes."
        )
    start = time.perf_counter()
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="keras_transfer_gpu_check_"))
    try:
        if args.smoke:
            args.image_size = args.example_image_size = args.optimizer_image_size = 32
            args.batch_size, args.warmup, args.steps, args.rounds = 4, 1, 1, 2
            args.example_head_epochs = args.example_fine_tune_epochs = 1
            weights, extra = None, {"alpha": 0.25}
            data_dir = _common.smoke_image_folder(per_class=6, size=40)
            hub_path = export_tiny_image_module(scratch / "tiny_hub")
        else:
            assets = _common.assets_dir(args.assets, _common.MOBILENET_WEIGHTS)
            weights, extra = str(assets / _common.MOBILENET_WEIGHTS), {}
            data_dir = assets / _common.DATASETS["hymenoptera"]
            hub_path = str(assets / HUB_MODEL)
        result = {
            "benchmark": "gpu_check",
            "smoke": args.smoke,
            "devices": [d.name for d in gpus] or ["CPU"],
            "image_size": args.image_size,
            "batch_size": args.batch_size,
        }
        result["precision_and_jit"] = precision_and_jit(args, weights, extra)
        print("precision_and_jit done", flush=True)
        result["mixed_vs_fp32"] = result["precision_and_jit"]["mixed_vs_fp32"]
        result["jit_vs_nojit"] = result["precision_and_jit"]["jit_vs_nojit"]
        result["optimizers"] = optimizer_check(args)
        print("optimizers done", flush=True)
        result["hub"] = hub_check(args, hub_path)
        print("hub done", flush=True)
        result["example"] = example_check(args, data_dir, weights)
        if args.smoke:
            shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["command"] = "python benchmarks/gpu_check.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    if not args.smoke:
        out = _common.output_dir(args.output_dir, "")
        _common.write_json(out / "gpu_check.json", result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
