"""How much of the ImageNet task does fine-tuning forget, block by block?

On the target dataset, MobileNet V1 (real ImageNet weights) gets a head trained on cached
features, then each arm fine-tunes all blocks (BatchNorm frozen) with the same budget:

- `fine_tune_1e-4`: Adam at 1e-4;
- `fine_tune_1e-5`: Adam at 1e-5;
- `l2sp_1e-4`: Adam at 1e-4 with L2-SP (`kt.apply_l2sp`: every backbone weight pulled toward
  its pretrained value, Li et al. 2018).

For each arm: the target validation accuracy, and `kt.forgetting_report` against the
pretrained backbone on probe images of *another* dataset (default: cats-vs-dogs validation
images): ImageNet top-1 agreement and mean KL under the original ImageNet top (from the
with-top weights file), and per-block linear CKA.

    python benchmarks/forgetting.py --dataset hymenoptera
    python benchmarks/forgetting.py --smoke     # synthetic data, weights=None, seconds

Writes benchmarks/results/forgetting_<dataset>.json; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_transfer as kt  # noqa: E402

MOBILENET_WITH_TOP = "weights/mobilenet_1_0_224_tf.h5"
ARMS = {
    "fine_tune_1e-4": {"lr": 1e-4, "l2sp": False},
    "fine_tune_1e-5": {"lr": 1e-5, "l2sp": False},
    "l2sp_1e-4": {"lr": 1e-4, "l2sp": True},
}


def probe_images(data, count: int) -> np.ndarray:
    batches, seen = [], 0
    for images, _ in data.validation:
        batches.append(images.numpy())
        seen += len(batches[-1])
        if seen >= count:
            break
    return np.concatenate(batches)[:count]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(_common.DATASETS), default="hymenoptera")
    parser.add_argument(
        "--probe_dataset", choices=sorted(_common.DATASETS), default="cats_and_dogs"
    )
    parser.add_argument("--probe_images", type=int, default=200)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--head_epochs", type=int, default=5)
    parser.add_argument("--fine_tune_epochs", type=int, default=5)
    parser.add_argument("--l2sp_alpha", type=float, default=0.05)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output", default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    arms = [arm.strip() for arm in args.arms.split(",") if arm.strip()]
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        raise SystemExit(f"Unknown arms {unknown}: choose from {list(ARMS)}.")

    if args.smoke:
        directory = probe_directory = _common.smoke_image_folder()
        size, weights, extra = 32, None, {"alpha": 0.25}
        with_top = keras.applications.MobileNet(
            weights=None, input_shape=(size, size, 3), classes=10, **extra
        )
        args.head_epochs, args.fine_tune_epochs = 1, 1
    else:
        assets = _common.assets_dir(args.assets, _common.DATASETS[args.dataset])
        directory = assets / _common.DATASETS[args.dataset]
        probe_directory = assets / _common.DATASETS[args.probe_dataset]
        size, weights, extra = 224, str(assets / _common.MOBILENET_WEIGHTS), {}
        with_top = keras.applications.MobileNet(weights=str(assets / MOBILENET_WITH_TOP))

    def backbone():
        return kt.create_backbone(
            "mobilenet", input_shape=(size, size, 3), weights=weights, **extra
        )

    pretrained = backbone()
    if args.smoke:  # the same random weights under the with-top model's head
        for layer in pretrained.model.layers:
            if layer.weights:
                with_top.get_layer(layer.name).set_weights(layer.get_weights())
    data = kt.image_folder_dataset(
        directory, image_size=size, batch_size=args.batch_size, augment="flip", seed=args.seed
    )
    probe_data = kt.image_folder_dataset(
        probe_directory, image_size=size, batch_size=args.batch_size, augment=False
    )
    probes = probe_images(probe_data, args.probe_images)
    print(f"{len(probes)} probe images from {probe_directory.name}")

    results = {}
    for arm in arms:
        settings = ARMS[arm]
        keras.utils.set_random_seed(args.seed)
        model = kt.create_classifier(backbone(), len(data.class_names))
        if settings["l2sp"]:
            kt.apply_l2sp(model, alpha=args.l2sp_alpha)
        arm_start = time.perf_counter()
        history = kt.fit_two_phase_cached(
            model,
            data.train,
            data.validation,
            feature_data=data.train_unaugmented,
            head_epochs=args.head_epochs,
            fine_tune_epochs=args.fine_tune_epochs,
            head_lr=1e-3,
            fine_tune_lr=settings["lr"],
            verbose=2,
        )
        seconds = time.perf_counter() - arm_start
        report = kt.forgetting_report(pretrained, model, probes, source_head=with_top)
        val_acc = history.history["val_accuracy"]
        results[arm] = {
            "val_accuracy": float(val_acc[-1]),
            "val_accuracy_after_head": float(val_acc[args.head_epochs - 1]),
            "source_top1_agreement": report["source_top1_agreement"],
            "source_mean_kl": report["source_mean_kl"],
            "block_cka": report["block_cka"],
            "least_similar_block": report["least_similar_block"],
            "seconds": seconds,
        }
        cka = report["block_cka"]
        print(
            f"{arm}: val acc {val_acc[-1]:.3f}, ImageNet top-1 agreement "
            f"{report['source_top1_agreement']:.3f}, mean KL {report['source_mean_kl']:.3f}, "
            f"CKA stem {cka['stem']:.3f} conv_dw_7 {cka['conv_dw_7']:.3f} "
            f"conv_dw_13 {cka['conv_dw_13']:.3f} ({seconds:.0f} s)"
        )
        if not args.smoke:
            out = _common.REPO_ROOT / "benchmarks" / "results"
            report.plot(out / f"forgetting_{args.dataset}_{arm}.png", title=f"{arm}: drift")

    result = {
        "dataset": "smoke" if args.smoke else args.dataset,
        "probe": f"{len(probes)} validation images of {'smoke' if args.smoke else args.probe_dataset}",
        "arms": results,
        "budget": {
            "head_epochs": args.head_epochs,
            "fine_tune_epochs": args.fine_tune_epochs,
            "l2sp_alpha": args.l2sp_alpha,
            "unfreeze": "all",
            "augment": "flip",
        },
        "seconds": time.perf_counter() - start,
        "load_average": _common.load_average(),
        "command": " ".join(["python", "benchmarks/forgetting.py", *sys.argv[1:]]),
    }
    if not args.smoke or args.output:
        path = pathlib.Path(
            args.output
            or _common.REPO_ROOT / "benchmarks" / "results" / f"forgetting_{args.dataset}.json"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        _common.write_json(path, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
