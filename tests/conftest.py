"""Shared test set-up: quiet TF logs, the real-assets fixture, and the tiny models, images,
datasets and image folders most tests start from (with `weights=None` and 32 px inputs, so
that they run on a fresh clone in seconds).

Test files do not import each other: a helper that several of them use is a fixture here
(returning the helper function where a test calls it with arguments). Code that scripts run
in subprocesses also need lives in tests/helpers.py, which those scripts import."""

import os
import pathlib
import re
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transfer as kt  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# The numerically sensitive group (marker `numerics`): whole files whose tests compare
# numbers across kernels, merges or save/load, and elsewhere every test whose name says it
# runs under mixed precision, XLA or a distribution strategy. CI runs it with oneDNN on (the
# newest TensorFlow) and off (TF_ENABLE_ONEDNN_OPTS=0, the oldest; .ci/run); tolerances there
# come from the dtype, not a lucky run.
NUMERICS_FILES = {
    "test_lora.py",
    "test_optimizers.py",
    "test_optimizers_distributed.py",
    "test_save_load.py",
    "test_keras_compat.py",
}
NUMERICS_NAMES = ("mixed_precision", "jit", "mirrored", "strategy")


def pytest_collection_modifyitems(items):
    on_tensorflow = keras.backend.backend() == "tensorflow"
    for item in items:
        if item.path.name in NUMERICS_FILES or any(n in item.name for n in NUMERICS_NAMES):
            item.add_marker(pytest.mark.numerics)
        if keras.backend.backend() != "jax" and item.get_closest_marker("jax_only"):
            item.add_marker(
                pytest.mark.skip(
                    reason=f"needs the JAX backend; Keras runs on {keras.backend.backend()}"
                )
            )
        if not on_tensorflow and item.get_closest_marker("tensorflow_only"):
            item.add_marker(
                pytest.mark.skip(
                    reason=f"needs the TensorFlow backend; Keras runs on {keras.backend.backend()}"
                )
            )


def assets_dir() -> pathlib.Path | None:
    """The real weights/datasets folder: $KERAS_TRANSFER_ASSETS, else ../shared/assets."""
    configured = os.environ.get("KERAS_TRANSFER_ASSETS")
    candidate = pathlib.Path(configured) if configured else REPO_ROOT.parent / "shared" / "assets"
    return candidate if (candidate / "README.md").is_file() else None


def load_benchmark(name: str):
    """benchmarks/<name>.py imported as a module (the benchmarks folder is not a package)."""
    import importlib.util

    path = REPO_ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture
def assets() -> pathlib.Path:
    """The real assets folder; skips the test (with the reason) when it is not present."""
    path = assets_dir()
    if path is None:
        pytest.skip(
            "real assets not found: set KERAS_TRANSFER_ASSETS or place them at ../shared/assets"
        )
    return path


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts from the default dtype policy and a fixed seed."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


def write_image_folder(root, class_counts, size=(40, 48), seed=0):
    """Writes a small learnable image folder: one subfolder per class, JPEGs whose colour
    depends on the class. Returns the written paths."""
    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)
    paths = []
    for label, (name, count) in enumerate(class_counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.uniform(0, 80, (*size, 3))
            image[..., label % 3] += 150
            encoded = tf.io.encode_jpeg(tf.constant(image.clip(0, 255).astype("uint8")))
            path = folder / f"{name}_{i}.jpg"
            path.write_bytes(encoded.numpy())
            paths.append(path)
    return paths


LABEL_TABLE_LABELS = ("red", "green", "blue")
LABEL_TABLE_TARGETS = ("redness", "blueness")


def write_label_table(root, count=24, seed=0, size=(40, 40)):
    """Writes `count` PNGs under `root/images/` and `root/labels.csv` labelling them for
    both table tasks: columns `file`, then one 0/1 column per colour channel brighter than
    128 (`LABEL_TABLE_LABELS`, multilabel; at least one per image) and the mean red and
    blue of the image in [0, 1] (`LABEL_TABLE_TARGETS`, regression: the channels' levels
    are uniform in [0, 255]). Returns (csv path, image folder)."""
    import csv

    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        levels = rng.uniform(0, 255, 3)
        levels[i % 3] = rng.uniform(150, 255)
        image = (levels + rng.uniform(-10, 10, (*size, 3))).clip(0, 255).astype("uint8")
        (images / f"{i}.png").write_bytes(tf.io.encode_png(tf.constant(image)).numpy())
        lit = (levels > 128).astype(int).tolist()
        redness, blueness = image[..., 0].mean() / 255, image[..., 2].mean() / 255
        rows.append([f"{i}.png", *lit, round(redness, 4), round(blueness, 4)])
    table = root / "labels.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *LABEL_TABLE_LABELS, *LABEL_TABLE_TARGETS])
        writer.writerows(rows)
    return table, images


@pytest.fixture
def image_folder(tmp_path):
    """A factory: image_folder({"cats": 6, "dogs": 6}, subdir="train") -> folder path."""

    def make(class_counts, subdir="", size=(40, 48), seed=0):
        root = tmp_path / "images" / subdir if subdir else tmp_path / "images"
        write_image_folder(root, class_counts, size=size, seed=seed)
        return root

    return make


@pytest.fixture
def tiny_image_folder(image_folder):
    """Two classes ("ants", "bees") of 6 colour-coded 40x40 JPEGs each, on disk."""
    return image_folder({"ants": 6, "bees": 6}, size=(40, 40))


# --- tiny models and data -------------------------------------------------------------


def make_tiny_classifier(
    num_classes=2, head=None, *, fitted_norms=False, functional=False, **kwargs
):
    """The smallest real classifier: MobileNet (alpha 0.25) at 32 px with random weights.

    `head` defaults to the guide's head without dropout (deterministic outputs); pass
    `head={}` for the package default (dropout 0.2) or any `ClassificationHead` options.
    With `fitted_norms`, the BatchNormalization statistics are those of `tiny_images()`, like
    pretrained ones: with fresh statistics (mean 0, variance 1) in inference mode the random
    network's activations vanish (~1e-17) and no backbone weight would visibly move.
    `functional=True` (with `fitted_norms`) nests that backbone in a plain functional model
    (Rescaling, the backbone, average pooling, a softmax Dense "top_dense") instead of a
    `TransferClassifier`.
    """
    head = {"dropout": 0.0} if head is None else head
    if not fitted_norms:
        return kt.create_classifier(
            "mobilenet",
            num_classes,
            head=head,
            input_shape=(32, 32, 3),
            weights=None,
            alpha=0.25,
            **kwargs,
        )
    backbone = kt.create_backbone(
        "mobilenet", input_shape=(32, 32, 3), weights=None, alpha=0.25, **kwargs
    )
    _fit_batch_norm_statistics(backbone.model, tiny_images() / 127.5 - 1.0)
    if not functional:
        return kt.create_classifier(backbone, num_classes, head=head)
    inputs = keras.Input((32, 32, 3))
    features = backbone.model(keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs))
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="top_dense")(pooled)
    return keras.Model(inputs, outputs)


def _fit_batch_norm_statistics(model, images):
    """Sets the moving statistics of every BatchNormalization layer of `model` to those of
    `images` (one training-mode call with momentum 0)."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(images, training=True)
    for layer in norms:
        layer.momentum = 0.99


@pytest.fixture
def tiny_classifier(request):
    """A fresh `make_tiny_classifier()` (2 classes, no dropout). Other options by indirect
    parametrisation: `@pytest.mark.parametrize("tiny_classifier", [{"num_classes": 3}],
    indirect=True)`."""
    return make_tiny_classifier(**getattr(request, "param", {}))


@pytest.fixture(scope="session")
def new_tiny_classifier():
    """`make_tiny_classifier` itself, for tests that build several models or build them at a
    chosen moment: `new_tiny_classifier(fitted_norms=True)`."""
    return make_tiny_classifier


def tiny_run_settings(data_dir, model_dir, **overrides):
    """The command's settings for a tiny, quick run, as a dict: MobileNet alpha 1 with
    random weights at 32 px, one head and one fine-tuning epoch of the top 2 blocks, a
    quarter of each class for validation, the fixed plan, no augmentation, silent;
    `overrides` replace any of them."""
    settings = dict(
        data_dir=str(data_dir),
        model_dir=str(model_dir),
        backbone="mobilenet",
        weights=None,
        image_size=32,
        batch_size=4,
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze_blocks="2",
        validation_split=0.25,
        augment="",
        verbose=0,
        plan="fixed",
    )
    return {**settings, **overrides}


@pytest.fixture(scope="session")
def tiny_run_config():
    """A factory of the command's `Config` for a tiny, quick run:
    `tiny_run_config(data_dir, model_dir, **overrides)` (`tiny_run_settings`)."""
    from keras_transfer.apps import image_config

    def make(data_dir, model_dir, **overrides):
        return image_config.Config(**tiny_run_settings(data_dir, model_dir, **overrides))

    return make


def tiny_images(n=16, size=32, seed=0):
    """`n` random RGB images in [0, 255], float32, shape (n, size, size, 3)."""
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


@pytest.fixture
def tiny_dataset():
    """16 random 32x32 images with labels 0, 1, 0, 1, ... in batches of 8 (unlearnable:
    for tests of what trains and when, not of how well)."""
    labels = (np.arange(16) % 2).astype("int32")
    return tf.data.Dataset.from_tensor_slices((tiny_images(16), labels)).batch(8)


def colour_dataset(n, seed, batch_size=16, size=32):
    """Two classes told apart by their dominant colour (red vs blue): a learnable task, so
    tests can require accuracy well above chance."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.uniform(0, 40, (n, size, size, 3))
    images[labels == 0, :, :, 0] += 200
    images[labels == 1, :, :, 2] += 200
    data = (images.astype("float32"), labels.astype("int32"))
    return tf.data.Dataset.from_tensor_slices(data).shuffle(n, seed=seed).batch(batch_size)


# Words of the tiny text encoder's vocabulary (`tiny_bert_preset`).
TINY_BERT_WORDS = (
    "win free prize cash call claim text now lunch home later mum dinner see you tonight "
    "at a for the sky red blue apple"
).split()


def write_tiny_bert_preset(folder) -> str:
    """Writes a KerasHub preset (`save_to_preset`) to `folder`: a tiny random
    `BertBackbone` (1 layer, 16 dimensions, 32 positions, seed 0) and a lowercase
    `BertTokenizer` of `TINY_BERT_WORDS`; returns the folder as a string."""
    import keras_hub

    folder = str(folder)
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_BERT_WORDS]
    keras.utils.set_random_seed(0)
    keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
    ).save_to_preset(folder)
    keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True).save_to_preset(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_preset(tmp_path_factory):
    """`write_tiny_bert_preset` in a session folder: what `text_classifier.build_classifier`
    and `kt.zero_shot_text_classifier` load, in a second. Skips without KerasHub."""
    pytest.importorskip("keras_hub", reason="needs the text extra (keras-hub)")
    return write_tiny_bert_preset(tmp_path_factory.mktemp("tiny_bert") / "preset")


# --- checks -----------------------------------------------------------------------------


def assert_png_image(path, min_size=(100, 100), min_colours=3):
    """The file is a PNG that decodes to an image of at least `min_size` (width, height)
    pixels with visible content: not one flat colour, at least `min_colours` colours."""
    encoded = pathlib.Path(path).read_bytes()
    assert encoded[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    image = tf.io.decode_png(encoded, channels=3).numpy()
    height, width = image.shape[:2]
    assert width >= min_size[0] and height >= min_size[1], (
        f"{path} is {width}x{height} px, expected at least {min_size[0]}x{min_size[1]}"
    )
    assert image.std() > 0, f"{path} is blank (one colour)"
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    assert colours >= min_colours, f"{path} has only {colours} colour(s)"
    return image


# --- helpers of several test files, as fixtures ---------------------------------------------


@pytest.fixture(scope="session")
def export_tiny_module():
    """`export_tiny_module(path, reusable_api=True)`: writes the tiny TF Hub-style SavedModel
    of tests/helpers.py at `path` and returns the path as a string."""
    import helpers  # on first use: helpers imports modules of the package

    return helpers.export_tiny_module


@pytest.fixture(scope="session")
def hub_classifier():
    """`hub_classifier(path, **backbone_options)`: a 2-class classifier without dropout on
    the SavedModel at `path` (tests/helpers.py)."""
    import helpers  # on first use: helpers imports modules of the package

    return helpers.hub_classifier


def keras_transfer_command(*args, timeout=300):
    """Runs `python -m keras_transfer ARGS` as a user would: TensorFlow's log level unset."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "keras_transfer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(REPO_ROOT.parent),
    )


# TensorFlow's C++ start-up log lines, which are not the command line programs' own output.
_TF_LOG = re.compile(r"^(?:[IWEF]\d{4} |WARNING: All log messages before absl::InitializeLog)")


def _run_binaries(script, cases):
    processes = {
        name: subprocess.Popen(
            [sys.executable, script, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        for name, (args, env) in cases.items()
    }
    results = {}
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        lines = [line for line in stderr.splitlines() if not _TF_LOG.match(line)]
        # Not an error: the run's backend and devices, logged where it is not TensorFlow on
        # one device (e.g. under KERAS_BACKEND=jax).
        lines = [line for line in lines if not line.startswith("Keras backend ")]
        results[name] = (process.returncode, stderr, lines)
    return results


@pytest.fixture(scope="session")
def run_binaries():
    """`run_binaries(script, {name: (args, extra environment)})` runs `script` once per case,
    in parallel; returns `{name: (exit code, stderr, stderr lines that are not TensorFlow's
    log nor the backend line)}`."""
    return _run_binaries


def _assert_one_line_error(name, result, code, *, says):
    returncode, stderr, lines = result
    assert returncode == code, (name, stderr[-2000:])
    assert "Traceback" not in stderr, name
    # One error line naming the problem, one hint line; no flag help.
    assert len(lines) == 2, (name, lines)
    assert lines[0].startswith("image_classifier.py: error: ") or lines[0].startswith(
        "text_classifier.py: error: "
    ), (name, lines)
    assert says in lines[0], (name, lines)
    assert lines[1].startswith("  hint: "), (name, lines)


@pytest.fixture(scope="session")
def assert_one_line_error():
    """`assert_one_line_error(name, result, code, says=...)`: a `run_binaries` result is exit
    `code` with exactly one error line containing `says` and one hint line, no traceback."""
    return _assert_one_line_error
