"""Shared set-up of the benchmark scripts: where the assets are, the output folder, and
the tiny synthetic image folder of the `--smoke` runs."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MOBILENET_WEIGHTS = "weights/mobilenet_1_0_224_tf_no_top.h5"
DATASETS = {
    "hymenoptera": "datasets/hymenoptera_data",
    "cats_and_dogs": "datasets/cats_and_dogs_filtered",
}


def assets_dir(flag: str | None, needs: str) -> pathlib.Path:
    """`--assets`, else `$KERAS_TRANSFER_ASSETS`, else `../shared/assets`; exits with the
    fix when `needs` (a path inside it) is missing."""
    path = pathlib.Path(
        flag or os.environ.get("KERAS_TRANSFER_ASSETS") or REPO_ROOT.parent / "shared" / "assets"
    )
    if not (path / needs).exists():
        raise SystemExit(
            f"{needs} not found under {path}: pass --assets or set KERAS_TRANSFER_ASSETS "
            "(or run with --smoke)."
        )
    return path


def output_dir(flag: str | None, name: str) -> pathlib.Path:
    path = pathlib.Path(flag) if flag else REPO_ROOT / "benchmarks" / "results" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def smoke_image_folder(per_class: int = 8, size: int = 40) -> pathlib.Path:
    """A temporary folder with train/ and validation/ splits of two colour-coded classes."""
    import tensorflow as tf

    root = pathlib.Path(tempfile.mkdtemp(prefix="keras_transfer_smoke_"))
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for label, name in enumerate(("ants", "bees")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = rng.uniform(0, 80, (size, size + 8, 3))
                image[..., label] += 150
                encoded = tf.io.encode_jpeg(tf.constant(image.clip(0, 255).astype("uint8")))
                (folder / f"{i}.jpg").write_bytes(encoded.numpy())
    return root


def write_json(path: pathlib.Path, result: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def mobilenet_features(
    assets: pathlib.Path, dataset: str, image_size: int = 224, cache_dir: str | None = None
) -> dict:
    """Average-pooled ImageNet MobileNet V1 features of a dataset's training (central crop,
    no augmentation) and validation images, one backbone pass per image.

    The arrays are kept in `cache_dir` (default: a folder in the system temp directory,
    never in the repository), so that several benchmarks (and reruns) share one extraction.
    Returns `{"train_x", "train_y", "val_x", "val_y", "class_names", "extract_seconds",
    "from_cache"}`; `extract_seconds` is the time of the extraction that wrote the cache.
    """
    import keras_transfer as kt

    folder = pathlib.Path(cache_dir or tempfile.gettempdir()) / "keras_transfer_bench_features"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"mobilenet_v1_{dataset}_{image_size}.npz"
    if path.exists():
        with np.load(path) as saved:
            result = {key: saved[key] for key in saved.files}
        result["class_names"] = [str(n) for n in result["class_names"]]
        result["extract_seconds"] = float(result["extract_seconds"])
        result["from_cache"] = True
        return result
    data = kt.image_folder_dataset(
        assets / DATASETS[dataset], image_size, batch_size=32, augment=False, shuffle=False
    )
    backbone = kt.create_backbone(
        "mobilenet",
        input_shape=(image_size, image_size, 3),
        weights=str(assets / MOBILENET_WEIGHTS),
    )
    extractor = kt.feature_extractor(backbone)
    train = kt.extract_features(extractor, data.train_unaugmented, verbose=0)
    validation = kt.extract_features(extractor, data.validation, verbose=0)
    result = {
        "train_x": np.asarray(train.features),
        "train_y": np.asarray(train.labels).astype(np.int64),
        "val_x": np.asarray(validation.features),
        "val_y": np.asarray(validation.labels).astype(np.int64),
        "class_names": list(data.class_names),
        "extract_seconds": train.seconds + validation.seconds,
    }
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in result.items()})
    os.replace(tmp, path)
    result["from_cache"] = False
    return result
