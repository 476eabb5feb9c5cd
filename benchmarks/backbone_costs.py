"""What each backbone costs on this CPU: parameters, feature size, file size, feature extraction
and one fine-tuning step, for the backbones a user picks from keras.applications, KerasHub and
TF Hub (docs/guide/choosing-a-backbone.md renders the table from the results file).

Every backbone is built the way a user builds it, at its pretrained input size:

- keras.applications (`mobilenet`, `mobilenet_v2`, `efficientnet_b0`, `resnet50`,
  `convnext_tiny`): `kt.create_backbone(name, weights=None)`. The weights change neither a
  forward nor a backward pass's cost, and only MobileNet V1's are on this machine.
- KerasHub (`vit_b16`, `dinov2_s14`, `clip_b32`, `siglip_b16`, `keras_hub_resnet50`): the
  published architecture (ViT-B/16, DINOv2 ViT-S/14, the CLIP ViT-B/32 and SigLIP base
  patch-16 image towers, ResNet-50) at 224 px with random weights, saved with
  `save_to_preset` beside an `ImageConverter` in a temporary folder and loaded by
  `kt.create_backbone("keras_hub:<folder>")`. A CLIP or SigLIP preset also holds a text tower;
  `create_backbone` keeps the image tower only, so only that is built here.
- TF Hub (`hub_mobilenet_v1`): `kt.create_backbone("hub:<assets>/tfhub/
  mobilenet_v1_100_224_feature_vector")`, the real SavedModel; skipped without the assets.

Measured once per backbone: its parameters, the feature dimension (`kt.feature_extractor`'s
output) and the bytes of the classifier's `.keras` file (`kt.save_model`, for inference;
`--no_file_bytes` skips it); with `--peak_rss`, the peak resident memory of a process of its
own that builds the backbone and runs its warm-up (in the shared process, memory one backbone
frees is reused by the next, so no per-backbone figure can be read there). Once every backbone
is built, each is warmed up (one extraction, on one image, and one step: tracing, first
allocations); then per round, for every backbone in an order rotated by the round:

- extraction: `kt.extract_features(kt.feature_extractor(backbone), ...)` on one batch of
  `--batch_size` random 0-255 images: preprocessing, the frozen backbone, pooling;
- fine-tuning step: one `train_on_batch` of the classifier (`kt.create_classifier`, a linear
  head without dropout, 10 classes) with the whole backbone trainable (`kt.unfreeze`,
  BatchNorm frozen as by default), Adam, sparse cross-entropy.

Both float32, without XLA (`jit_compile=False`, the package's default on CPU), in one process
holding every backbone. Each time is divided by the batch size (ms per image); the summary is
the median over the rounds. Nothing is tuned.

    python benchmarks/backbone_costs.py                       # every backbone, 1 round
    python benchmarks/backbone_costs.py --rounds=3 --peak_rss
    python benchmarks/backbone_costs.py --backbones=vit_b16,mobilenet --rounds=5
    python benchmarks/backbone_costs.py --smoke               # tiny models at 32 px

Duration (estimated, not run: the full run is the lead's, alone on the machine). The smoke run
(the tiny models, 2 rounds) takes about 30 s here besides Python's start, nearly all of it
tracing; at the published sizes a fine-tuning step's first trace takes 10 to 50 s per backbone
(measured in a partial run: 6 of the backbones, batch 8, 1 round, under a load of 3 to 4 on 2
cores), about 4 minutes for all. The partial run also gave the rate per architecture: the
multiply-adds alone do not predict it (ResNet-50, 4.1 G multiply-adds per image, extracts at
about 75 ms per image; ViT-B/16, 17.6 G, at about 640; ConvNeXt-T, 4.5 G, also at about 640,
and its step at about 2.6 s per image). Scaling the others by their multiply-adds (SigLIP base
as ViT-B/16, CLIP ViT-B/32 a quarter of it, the KerasHub ResNet-50 and the MobileNets as
measured or their keras.applications twins) gives about 2.5 s of extraction and 6.3 s of
steps per image over all backbones: about 4.5 minutes per round of 32 images. With the warm-up
steps (about 3.5 minutes of compute besides the tracing) and building (the KerasHub presets
and `.keras` files, about 2 minutes), the default single round takes about 14 minutes at that
load and about 11 on an idle machine; each further round adds about 4.5 minutes, and
`--peak_rss` about as much as the warm-up again (a process per backbone).

Writes `benchmarks/results/backbone_costs.json` through `_common.write_results` (kind
"timing"). The last line printed is one JSON object
`{backbone: {params, extract_ms_per_image, train_step_ms_per_image}}`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_transfer as kt  # noqa: E402

HUB_MODEL = "tfhub/mobilenet_v1_100_224_feature_vector"
NUM_CLASSES = 10
PAIRING = (
    "round r times every backbone's extraction and fine-tuning step back to back, the "
    "backbones in an order rotated by r; each value is one timed call on one batch, after one "
    "untimed warm-up call per backbone and measurement"
)
# `keras_hub.layers.ImageConverter` arguments: ResNet's per-channel ImageNet normalisation,
# the transformers' scale to [-1, 1] (the cost is the same either way).
_MEAN, _STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
RESNET_SCALING = {"scale": list(1 / (255 * _STD)), "offset": list(-_MEAN / _STD)}
SIGNED_SCALING = {"scale": 1 / 127.5, "offset": -1.0}


@dataclasses.dataclass(frozen=True)
class KerasHubArchitecture:
    """A KerasHub image backbone at its published size (`full`) and a tiny one (`smoke`):
    the `keras_hub.models` class and its constructor arguments without `image_shape`."""

    cls: str
    full: dict
    smoke: dict
    scaling: dict = dataclasses.field(default_factory=lambda: SIGNED_SCALING)


_TINY_TRANSFORMER = dict(patch_size=8, num_layers=2, num_heads=2, hidden_dim=16)
KERAS_HUB = {
    "vit_b16": KerasHubArchitecture(
        "ViTBackbone",
        dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
        dict(_TINY_TRANSFORMER, mlp_dim=32),
    ),
    "dinov2_s14": KerasHubArchitecture(
        "DINOV2Backbone",
        # The published presets' position embeddings are for 518 px, interpolated to 224.
        dict(
            patch_size=14,
            num_layers=12,
            num_heads=6,
            hidden_dim=384,
            intermediate_dim=1536,
            position_embedding_shape=(518, 518, 3),
        ),
        dict(_TINY_TRANSFORMER, intermediate_dim=32, position_embedding_shape=(32, 32, 3)),
    ),
    "clip_b32": KerasHubArchitecture(
        "CLIPVisionEncoder",
        dict(patch_size=32, num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072),
        dict(_TINY_TRANSFORMER, intermediate_dim=32),
    ),
    "siglip_b16": KerasHubArchitecture(
        "SigLIPVisionEncoder",
        dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072),
        dict(_TINY_TRANSFORMER, intermediate_dim=32),
    ),
    "keras_hub_resnet50": KerasHubArchitecture(
        "ResNetBackbone",
        dict(
            input_conv_filters=[64],
            input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 128, 256, 512],
            stackwise_num_blocks=[3, 4, 6, 3],
            stackwise_num_strides=[1, 2, 2, 2],
            block_type="bottleneck_block",
        ),
        dict(
            input_conv_filters=[64],
            input_conv_kernel_sizes=[3],
            stackwise_num_filters=[64, 16],
            stackwise_num_blocks=[1, 1],
            stackwise_num_strides=[1, 2],
            block_type="basic_block",
        ),
        RESNET_SCALING,
    ),
}
APPLICATIONS = ("mobilenet", "mobilenet_v2", "efficientnet_b0", "resnet50", "convnext_tiny")
# The smoke run's keras.applications arguments: the narrowest MobileNets.
SMOKE_APPLICATION_KWARGS = {"mobilenet": {"alpha": 0.25}, "mobilenet_v2": {"alpha": 0.35}}
BACKBONES = (*APPLICATIONS, *KERAS_HUB, "hub_mobilenet_v1")
# The smoke run's default: one keras.applications backbone (the others take the same path and
# only trace longer), every KerasHub architecture (each its own constructor), TF Hub.
SMOKE_BACKBONES = ("mobilenet", *KERAS_HUB, "hub_mobilenet_v1")
SOURCES = {
    **{name: "keras.applications" for name in APPLICATIONS},
    **{name: "KerasHub" for name in KERAS_HUB},
    "hub_mobilenet_v1": "TF Hub",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", default=None, help="for the TF Hub SavedModel")
    parser.add_argument("--output", default=None, help="results file")
    parser.add_argument(
        "--backbones",
        default=None,
        help=f"comma-separated, of {', '.join(BACKBONES)}; default all (smoke: "
        f"{', '.join(SMOKE_BACKBONES)})",
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no_file_bytes", action="store_true", help="skip the .keras files")
    parser.add_argument(
        "--peak_rss",
        action="store_true",
        help="also the peak memory of each backbone's warm-up, each in a process of its own",
    )
    # The process --peak_rss starts per backbone: build it, warm it up, print the peak.
    parser.add_argument("--peak_rss_of", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    chosen = args.peak_rss_of or args.backbones
    chosen = chosen or ",".join(SMOKE_BACKBONES if args.smoke else BACKBONES)
    args.backbones = [name.strip() for name in chosen.split(",") if name.strip()]
    unknown = sorted(set(args.backbones) - set(BACKBONES))
    if unknown or not args.backbones:
        parser.error(f"--backbones: unknown {unknown}; choose from {', '.join(BACKBONES)}")
    if args.rounds < 1 or args.batch_size < 1:
        parser.error("--rounds and --batch_size must be >= 1")
    if args.smoke:  # two rounds, to rotate the order once
        args.batch_size, args.rounds = min(args.batch_size, 4), 2
    return args


# --- building, the way a user does ---------------------------------------------------------


def _keras_hub_preset(name: str, smoke: bool, folder: pathlib.Path) -> str:
    """A preset folder of KerasHub architecture `name`, random weights, with its converter."""
    import keras_hub

    architecture = KERAS_HUB[name]
    size = 32 if smoke else 224
    arguments = dict(architecture.smoke if smoke else architecture.full)
    if "position_embedding_shape" in arguments:
        arguments["position_embedding_shape"] = tuple(arguments["position_embedding_shape"])
    backbone = getattr(keras_hub.models, architecture.cls)(image_shape=(size, size, 3), **arguments)
    path = folder / name
    backbone.save_to_preset(str(path))
    converter = keras_hub.layers.ImageConverter(image_size=(size, size), **architecture.scaling)
    converter.save_to_preset(str(path))
    return str(path)


def backbone_factory(
    name: str, args: argparse.Namespace, folder: pathlib.Path
) -> Callable[[], kt.Backbone] | str:
    """A function building backbone `name` (untimed), or why it cannot be built here."""
    if name in APPLICATIONS:
        size = 32 if args.smoke else None  # None: the pretrained size
        extra = SMOKE_APPLICATION_KWARGS.get(name, {}) if args.smoke else {}
        shape = (size, size, 3) if size else None
        return lambda: kt.create_backbone(name, input_shape=shape, weights=None, **extra)
    if name in KERAS_HUB:
        try:
            import keras_hub  # noqa: F401
        except ImportError:
            return "keras-hub is not installed (pip install keras-hub)"

        preset = _keras_hub_preset(name, args.smoke, folder)
        return lambda: kt.create_backbone(f"keras_hub:{preset}")
    try:
        path = _common.assets_dir(args.assets, HUB_MODEL) / HUB_MODEL
    except SystemExit as missing:
        return str(missing)
    shape = (32, 32, 3) if args.smoke else None
    return lambda: kt.create_backbone(f"hub:{path}", input_shape=shape)


# --- measuring -------------------------------------------------------------------------------


@dataclasses.dataclass
class Arm:
    """One backbone, built: its feature extractor, its classifier for fine-tuning, one batch,
    and what was measured once."""

    name: str
    extractor: keras.Model
    model: keras.Model
    images: np.ndarray
    labels: np.ndarray
    facts: dict

    def extract(self, count: int | None = None) -> float:
        """Seconds of one extraction of the batch (or of its first `count` images)."""
        import tensorflow as tf

        batches = tf.data.Dataset.from_tensors((self.images[:count], self.labels[:count]))
        start = time.perf_counter()
        kt.extract_features(self.extractor, batches, verbose=0)
        return time.perf_counter() - start

    def train_step(self) -> float:
        start = time.perf_counter()
        self.model.train_on_batch(self.images, self.labels)
        return time.perf_counter() - start


def build_arm(name: str, build: Callable[[], kt.Backbone], args, folder) -> Arm:
    """Builds backbone `name`, its extractor and classifier; measures its `.keras` file."""
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    backbone = build()
    extractor = kt.feature_extractor(backbone)
    model = kt.create_classifier(backbone, NUM_CLASSES, head={"dropout": 0.0})
    size = int(backbone.input_shape[0])
    facts = {
        "source": SOURCES[name],
        "input_size": size,
        "params": int(backbone.model.count_params()),
        "feature_dim": int(extractor.output_shape[-1]),
        "keras_file_bytes": None if args.no_file_bytes else _keras_file_bytes(model, folder),
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    rng = np.random.default_rng(args.seed)
    images = rng.uniform(0, 255, (args.batch_size, size, size, 3)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, args.batch_size).astype("int32")
    return Arm(name, extractor, model, images, labels, facts)


def warm_up(arm: Arm) -> None:
    """Makes the whole backbone trainable, compiles the classifier and runs one extraction
    and one step untimed (tracing, first allocations: gradients, Adam's slots). Run once every
    backbone is built, so that building and saving the others comes before, not between, a
    backbone's warm-up and its first timed round. The extraction warms up on one image: its
    traced function takes any batch size."""
    kt.unfreeze(arm.model)
    arm.model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss="sparse_categorical_crossentropy",
        jit_compile=False if keras.backend.backend() == "tensorflow" else "auto",
    )
    facts = arm.facts
    facts["trainable_params"] = int(sum(np.prod(v.shape) for v in arm.model.trainable_weights))
    facts["warmup_extract_seconds"] = round(arm.extract(count=1), 3)
    facts["warmup_train_step_seconds"] = round(arm.train_step(), 3)


def _process_peak_rss_mb() -> float:
    """This process's peak resident memory: Linux's VmHWM (`ru_maxrss` keeps the parent's
    value across `exec`, so a child started by a large process would report the parent's)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def peak_rss_mb(name: str, args: argparse.Namespace) -> float | None:
    """The peak resident memory of a process that builds backbone `name` and warms it up
    (TensorFlow's own memory, the weights, the step's gradients, Adam's slots and
    activations), from a process of its own: in the shared one, memory an earlier backbone
    freed is reused."""
    command = [sys.executable, os.path.abspath(__file__), "--peak_rss_of", name, "--no_file_bytes"]
    command += ["--batch_size", str(args.batch_size), "--seed", str(args.seed)]
    command += (["--assets", args.assets] if args.assets else []) + (
        ["--smoke"] if args.smoke else []
    )
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{name}: no peak memory: {done.stderr.strip()[-500:]}", flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def _keras_file_bytes(model: keras.Model, folder: pathlib.Path) -> int | None:
    path = folder / "model.keras"
    try:
        kt.save_model(model, path)
        return path.stat().st_size
    except Exception as error:  # noqa: BLE001 (a size that cannot be measured is recorded)
        print(f"  no .keras file: {type(error).__name__}: {error}", flush=True)
        return None
    finally:
        path.unlink(missing_ok=True)


def run_rounds(arms: list[Arm], rounds: int) -> list[dict]:
    """`[{backbone: {extract_seconds, train_step_seconds}}]`, one per round, each in the
    order its backbones ran."""
    results = []
    for r in range(rounds):
        shift = r % len(arms)
        order = arms[shift:] + arms[:shift]
        timings = {}
        for arm in order:
            timings[arm.name] = {"extract_seconds": arm.extract()}
            timings[arm.name]["train_step_seconds"] = arm.train_step()
        results.append(timings)  # in the order they ran
        print(
            f"round {r}: "
            + ", ".join(
                f"{name} {t['extract_seconds']:.2f}/{t['train_step_seconds']:.2f} s"
                for name, t in results[-1].items()
            )
            + f"; load {_common.load_average()}",
            flush=True,
        )
    return results


def results_arms(rounds: list[dict], batch_size: int) -> dict:
    """`{backbone: {metric: [one value per round]}}` in ms per image."""
    names = list(rounds[0])  # round 0 runs them in the order asked for
    return {
        name: {
            "extract_ms_per_image": [
                1000 * r[name]["extract_seconds"] / batch_size for r in rounds
            ],
            "train_step_ms_per_image": [
                1000 * r[name]["train_step_seconds"] / batch_size for r in rounds
            ],
        }
        for name in names
    }


def build_arms(args, folder: pathlib.Path) -> tuple[list[Arm], dict[str, str]]:
    """Every backbone built, then every one warmed up; `{name: why}` of those skipped."""
    arms, skipped = [], {}
    for name in args.backbones:
        build = backbone_factory(name, args, folder)
        if isinstance(build, str):
            print(f"{name}: skipped: {build}", flush=True)
            skipped[name] = build
            continue
        arms.append(build_arm(name, build, args, folder))
    if not arms:
        raise SystemExit(f"No backbone could be built here: {skipped}")
    for arm in arms:
        warm_up(arm)
        print(f"{arm.name}: {json.dumps(arm.facts)}", flush=True)
    return arms, skipped


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.peak_rss_of:  # the process of `peak_rss_mb`
        with tempfile.TemporaryDirectory(prefix="backbone_costs_") as folder:
            build_arms(args, pathlib.Path(folder))
        peak = {"peak_rss_mb": _process_peak_rss_mb()}
        print(json.dumps(peak))
        return peak
    run = _common.start_run(
        {
            "tuned": "nothing: every backbone at its pretrained input size (32 px in a smoke "
            f"run), batch {args.batch_size} of random images, float32, no XLA, one linear "
            "head, Adam",
            "tuned_on": None,
            "pairing": PAIRING,
        },
        script=__file__,
        argv=argv,
    )
    folder = pathlib.Path(tempfile.mkdtemp(prefix="backbone_costs_"))
    try:
        arms, skipped = build_arms(args, folder)
        rounds = run_rounds(arms, args.rounds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    arms_metrics = results_arms(rounds, args.batch_size)
    for arm in arms if args.peak_rss else ():
        arm.facts["peak_rss_mb"] = peak_rss_mb(arm.name, args)
    _common.write_results(
        _common.results_path(args.output, args.smoke, "backbone_costs"),
        run,
        kind="timing",
        benchmark="backbone_costs",
        dataset="smoke" if args.smoke else "random_images",
        splits={"batch": args.batch_size},
        evaluated_on="batch",
        repeats=args.rounds,
        arms=arms_metrics,
        primary_metric="train_step_ms_per_image",
        comparisons=[],
        details={
            "backbones": {arm.name: arm.facts for arm in arms},
            "skipped": skipped,
            "rounds": rounds,
            "backend": keras.backend.backend(),
            "settings": vars(args) | {"assets": None},
        },
    )
    summary = {
        arm.name: {
            "params": arm.facts["params"],
            **{
                metric: statistics.median(values)
                for metric, values in arms_metrics[arm.name].items()
            },
        }
        for arm in arms
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
