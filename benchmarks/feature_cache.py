"""Cached feature extraction vs the Keras-guide recipe, on ants-vs-bees.

Both arms train the same head (global average pooling, dropout 0.2, softmax) on the same
images (224 px centre crops, no augmentation), seed, optimizer (Adam 1e-3) and epochs:

- `guide`: the Keras transfer-learning guide's way: the frozen backbone inside the model,
  `model.fit` on images, so every epoch runs the backbone over the training and
  validation images.
- `cached`: `fit_feature_extractor`: the backbone runs once over each split, the head
  trains on the cached features, then is re-attached to the backbone.

The decoded images are cached in memory (and warmed up) before either arm is timed. Both
run in one process, one after the other.

    python benchmarks/feature_cache.py             # real data and weights
    python benchmarks/feature_cache.py --smoke     # seconds: synthetic data, weights=None

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import keras  # noqa: E402

import keras_transfer as kt  # noqa: E402
from keras_transfer.data import folders as data_lib  # noqa: E402
from keras_transfer.training import features  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    out = _common.output_dir(args.output_dir, "feature_cache")

    if args.smoke:
        directory, weights, size, extra = _common.smoke_image_folder(), None, 32, {"alpha": 0.25}
        args.epochs = min(args.epochs, 2)
    else:
        assets = _common.assets_dir(args.assets, _common.DATASETS["hymenoptera"])
        directory = assets / _common.DATASETS["hymenoptera"]
        weights, size, extra = str(assets / _common.MOBILENET_WEIGHTS), args.image_size, {}
    data = data_lib.image_folder_dataset(
        directory,
        args.image_size if not args.smoke else size,
        args.batch_size,
        augment=False,
        seed=args.seed,
    )
    for dataset in (data.train, data.validation):  # decode and cache the images untimed
        for _ in dataset:
            pass
    num_classes = len(data.class_names)
    load_before = _common.load_average()

    def backbone():
        return kt.create_backbone(
            "mobilenet", input_shape=(size, size, 3), weights=weights, **extra
        )

    keras.utils.set_random_seed(args.seed)
    model = kt.create_classifier(backbone(), num_classes)
    kt.freeze(model)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    start = time.perf_counter()
    history = model.fit(data.train, validation_data=data.validation, epochs=args.epochs, verbose=2)
    guide_s = time.perf_counter() - start
    guide_acc = float(history.history["val_accuracy"][-1])

    keras.utils.set_random_seed(args.seed)
    # Built before the clock starts, as the guide arm's model is.
    cached_backbone = backbone()
    start = time.perf_counter()
    result = features.fit_feature_extractor(
        cached_backbone,
        data.train,
        data.validation,
        num_classes=num_classes,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        seed=args.seed,
        verbose=2,
    )
    cached_s = time.perf_counter() - start
    cached_acc = float(result.history.history["val_accuracy"][-1])
    end_to_end = result.model.evaluate(data.validation, verbose=0, return_dict=True)

    summary = {
        "speedup": guide_s / cached_s,
        "guide_s": guide_s,
        "cached_s": cached_s,
        "guide_val_acc": guide_acc,
        "cached_val_acc": cached_acc,
    }
    details = {
        **summary,
        "cached_extract_s": result.seconds["extract"],
        "cached_head_train_s": result.seconds["train"],
        "cached_end_to_end_val_acc": float(end_to_end["accuracy"]),
        "epochs": args.epochs,
        "image_size": size,
        "num_train": data.num_train,
        "num_validation": data.num_validation,
        "load_average_before": load_before,
        "load_average_after": _common.load_average(),
        "smoke": args.smoke,
    }
    _common.write_json(out / "results.json", details)
    print(json.dumps(details, indent=2))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
