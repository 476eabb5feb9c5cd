"""KerasHub image backbones (`create_backbone("keras_hub:<preset folder>")`) without downloads:
tiny random backbones of every supported family, saved with `save_to_preset` beside an
ImageConverter, then used through keras_transfer: blocks, preprocessing, pooled features,
freezing, per-block outputs, LoRA adapters, `.keras` files, SavedModel export, mixed
precision and the command."""

import functools
import json
import sys

import h5py
import keras
import numpy as np
import pytest
from conftest import write_image_folder
from helpers import KERAS_HUB_SIZE
from helpers import TINY_KERAS_HUB_CLASSES
from helpers import tiny_keras_hub_model

import keras_transfer as kt
from keras_transfer.backbones.keras_hub import families

keras_hub = pytest.importorskip("keras_hub", reason="needs the keras_hub extra (keras-hub)")

SIZE = KERAS_HUB_SIZE

# family -> a tiny random backbone of it (all at 32 px, a few thousand weights).
BUILDERS = {
    family: functools.partial(tiny_keras_hub_model, family)
    for family in TINY_KERAS_HUB_CLASSES
    if family != "bert"  # a text model
}

# The ImageNet mean/std normalisation, per channel, as an ImageConverter's scale and offset.
_MEAN, _STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
PER_CHANNEL = {"scale": list(1 / (255 * _STD)), "offset": list(-_MEAN / _STD)}


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """`preset(family)` -> a preset folder of a tiny random backbone of that family (built
    once per module) with an ImageConverter: ResNet's per-channel ImageNet normalisation,
    the others' scale 1/127.5, offset -1."""
    root = tmp_path_factory.mktemp("keras_hub_presets")
    made = {}

    def make(family):
        if family not in made:
            keras.utils.set_random_seed(1)
            folder = str(root / family)
            backbone = BUILDERS[family]()
            backbone.save_to_preset(folder)
            scaling = PER_CHANNEL if family == "resnet" else {"scale": 1 / 127.5, "offset": -1.0}
            converter = keras_hub.layers.ImageConverter(image_size=(SIZE, SIZE), **scaling)
            converter.save_to_preset(folder)
            tower = families.image_tower(backbone)
            SAVED_WEIGHTS[folder] = [keras.ops.convert_to_numpy(v) for v in tower.weights]
            made[family] = folder
        return made[family]

    return make


# preset folder -> the saved backbone's (image tower's) weights, to check they are loaded.
SAVED_WEIGHTS = {}


def _images(n=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def _hub_backbone(backbone):
    return families.find_image_backbone(backbone.model)


# --- every family -------------------------------------------------------------------------


def test_every_supported_family_has_a_tiny_preset_here():
    assert set(kt.supported_keras_hub_families()) == set(BUILDERS)
    assert kt.supported_keras_hub_families()["vit"] == "ViTBackbone"


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_family_builds_with_blocks_preprocessing_and_pooled_features(preset, family):
    folder = preset(family)
    backbone = kt.create_backbone(f"keras_hub:{folder}")
    hub = _hub_backbone(backbone)
    assert families.family_of(hub).name == family
    assert backbone.name == f"keras_hub:{folder}" and backbone.preprocessing is None
    assert backbone.default_size == SIZE and backbone.input_shape == (SIZE, SIZE, 3)

    # The preset's weights are loaded, not fresh ones.
    for mine, saved in zip(hub.weights, SAVED_WEIGHTS[folder], strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine), saved)

    # The preset's scaling is the model's first layer.
    rescaling = backbone.model.get_layer("preprocessing")
    expected_scale = PER_CHANNEL["scale"] if family == "resnet" else 1 / 127.5
    np.testing.assert_allclose(rescaling.scale, expected_scale)

    # Features: a pooled vector for transformers, the last feature map for CNNs.
    features = backbone.model(_images())
    assert len(features.shape) in (2, 4)

    # Blocks cover every weight of the backbone exactly once, input side first.
    blocks = backbone.blocks
    assert len(blocks) >= 3, backbone.block_names()
    in_blocks = [id(v) for block in blocks for v in block.variables]
    assert sorted(in_blocks) == sorted(id(v) for v in hub.weights)

    # Each block's output, in one pass; the last block's is the backbone's output.
    probe = keras.Model(backbone.model.input, [block.output for block in blocks])
    outputs = probe(_images())
    assert all(len(out.shape) in (2, 4) for out in outputs)
    np.testing.assert_allclose(outputs[-1], features, rtol=1e-5, atol=1e-5)

    # Freezing by block: top_blocks=1 leaves only the last block's weights trainable.
    model = kt.create_classifier(backbone, 3)
    assert tuple(model(_images()).shape) == (2, 3)
    kt.unfreeze(model, top_blocks=1)
    trainable = {id(v) for v in model.backbone.trainable_weights}
    assert trainable and trainable <= {id(v) for v in blocks[-1].variables}


# --- LoRA, saving, export, precision -----------------------------------------------------


def _perturb(variables, seed=0):
    """Moves `variables` away from their values (what training would do), cheaply."""
    rng = np.random.default_rng(seed)
    for variable in variables:
        variable.assign(variable + rng.normal(0, 0.1, variable.shape).astype(variable.dtype))


def test_lora_defaults_to_query_value_and_adapter_is_keyed_by_layer_path(preset, tmp_path):
    folder = preset("vit")
    model = kt.create_classifier(f"keras_hub:{folder}", 3)
    summary = kt.enable_lora(model, rank=2)
    # Keras' EinsumDense query/value projections of both transformer blocks, nothing else.
    assert len(summary.adapted) == 4
    assert all(path.rsplit("/", 1)[-1] in ("query", "value") for path in summary.adapted)
    assert any("transformer_block_2" in path for path in summary.adapted)
    lora_layers = kt.lora.lora_layers(model)
    _perturb([layer.lora_kernel_b for layer in lora_layers] + model.head.trainable_weights)

    path = tmp_path / "adapter.weights.h5"
    metadata = kt.save_adapter(model, path)
    assert sorted(metadata["layers"]) == sorted(summary.adapted)
    with h5py.File(path) as f:
        stored = {f["variables"][k].attrs["path"] for k in f["variables"]}
    assert {f"{layer}/lora_kernel_b" for layer in summary.adapted} <= stored

    fresh = kt.create_classifier(f"keras_hub:{folder}", 3)
    kt.load_adapter(fresh, path)
    images = _images(3, seed=5)
    expected = model(images)
    assert not np.allclose(kt.create_classifier(f"keras_hub:{folder}", 3)(images), expected)
    np.testing.assert_allclose(fresh(images), expected, atol=1e-6)
    merged = kt.merge_lora(model)
    assert not kt.lora.lora_layers(merged)
    np.testing.assert_allclose(merged(images), expected, atol=1e-5)


def test_lora_targets_by_layer_path_pattern(preset):
    model = kt.create_classifier(f"keras_hub:{preset('vit')}", 3)
    summary = kt.enable_lora(model, rank=2, targets=["transformer_block_2/.*/key$", "value"])
    assert sorted(p.split("/")[-3] + "/" + p.rsplit("/", 1)[-1] for p in summary.adapted) == [
        "transformer_block_1/value",
        "transformer_block_2/key",
        "transformer_block_2/value",
    ]
    # A pattern naming nothing fails with the layer paths to write one from.
    with pytest.raises(ValueError, match="name no LoRA-capable layer") as error:
        kt.check_lora_request(
            kt.create_classifier(f"keras_hub:{preset('vit')}", 3), targets=["no_such/.*x"]
        )
    assert f"there: {sorted(summary.adapted + summary.not_targeted)[0]}, " in str(error.value)


def test_lora_on_a_cnn_family_adapts_its_convolutions(preset):
    model = kt.create_classifier(f"keras_hub:{preset('resnet')}", 3)
    summary = kt.enable_lora(model, rank=2, top_blocks=1)
    assert summary.adapted and all("conv" in path for path in summary.adapted)


def test_keras_file_round_trip_keeps_predictions_blocks_and_name(preset, tmp_path):
    model = kt.create_classifier(f"keras_hub:{preset('dinov2')}", 3)
    _perturb(kt.backbones.backbone_of(model).blocks[-1].variables)
    path = tmp_path / "model.keras"
    kt.save_model(model, path)
    loaded = kt.load_model(path)
    images = _images(3, seed=2)
    np.testing.assert_allclose(loaded(images), model(images), atol=1e-6)
    assert loaded.backbone_name == model.backbone_name
    block_names = kt.backbones.backbone_of(model).block_names()
    assert kt.backbones.backbone_of(loaded).block_names() == block_names


@pytest.mark.tensorflow_only
def test_saved_model_export_serves_raw_images(preset, tmp_path):
    import tensorflow as tf

    model = kt.create_classifier(f"keras_hub:{preset('resnet')}", 3)
    model.export(str(tmp_path / "serving"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "serving"))
    images = _images(2, seed=3)
    np.testing.assert_allclose(served.serve(images).numpy(), model(images), atol=1e-5)


def test_mixed_precision_computes_in_float16_with_float32_outputs(preset):
    keras.config.set_dtype_policy("mixed_float16")
    model = kt.create_classifier(f"keras_hub:{preset('vit')}", 3)
    assert _hub_backbone(kt.backbones.backbone_of(model)).compute_dtype == "float16"
    outputs = keras.ops.convert_to_numpy(model(_images()))
    assert outputs.dtype == np.float32 and np.all(np.isfinite(outputs))


# --- diagnostics -------------------------------------------------------------------------


def test_transferability_and_forgetting_per_block(preset):
    backbone = kt.create_backbone(f"keras_hub:{preset('vit')}")
    images, labels = _images(8, seed=4), np.arange(8) % 2
    scores = kt.transferability(backbone, (images, labels), "logme", blocks="all")
    assert list(scores) == backbone.block_names()
    assert all(np.isfinite(value) for value in scores.values())

    model = kt.create_classifier(backbone, 2)
    pretrained = kt.forgetting.pretrained_copy(model)
    _perturb(backbone.blocks[-1].variables)  # as if only the top block had trained
    cka = kt.forgetting_report(pretrained, model, images)["block_cka"]
    assert list(cka) == backbone.block_names()
    for name in backbone.block_names()[:-1]:
        assert cka[name] == pytest.approx(1.0, abs=1e-5)
    assert cka[backbone.block_names()[-1]] < 0.999


# --- errors ------------------------------------------------------------------------------


def test_preset_without_image_converter_says_how_to_add_one(tmp_path):
    BUILDERS["vgg"]().save_to_preset(str(tmp_path / "bare"))
    with pytest.raises(ValueError, match="has no image converter.*save_to_preset"):
        kt.create_backbone(f"keras_hub:{tmp_path / 'bare'}")
    backbone = kt.create_backbone(f"keras_hub:{tmp_path / 'bare'}", scale=1 / 255)
    assert backbone.model.get_layer("preprocessing").scale == 1 / 255


def test_fixed_size_family_refuses_another_size_clearly(preset):
    with pytest.raises(ValueError, match="takes one input size only"):
        kt.create_backbone(f"keras_hub:{preset('vit')}", input_shape=(48, 48, 3))


def test_weights_file_or_unknown_weights_is_refused(preset):
    with pytest.raises(ValueError, match="'imagenet' or 'preset'.*None"):
        kt.create_backbone(f"keras_hub:{preset('vgg')}", weights="/tmp/x.h5")


def test_text_preset_is_not_an_image_backbone(tmp_path):
    tiny_keras_hub_model("bert").save_to_preset(str(tmp_path / "bert"))
    with pytest.raises(ValueError, match="BertBackbone.*not an image backbone.*vit"):
        kt.create_backbone(f"keras_hub:{tmp_path / 'bert'}")


def test_missing_keras_hub_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)
    with pytest.raises(ImportError, match=r"keras-transfer\[keras_hub\]"):
        families.import_keras_hub()


# --- the command -------------------------------------------------------------------------


def test_command_trains_lora_writes_adapter_by_layer_path_and_exports(preset, tmp_path):
    # On TensorFlow also the SavedModel and TFLite exports; the other backends skip them.
    from keras_transfer.apps import image_classifier as app
    from keras_transfer.apps import image_config

    write_image_folder(tmp_path / "images", {"ants": 6, "bees": 6}, size=(SIZE, SIZE))
    config = image_config.Config(
        data_dir=str(tmp_path / "images"),
        model_dir=str(tmp_path / "out"),
        backbone=f"keras_hub:{preset('vit')}",
        batch_size=4,
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze_blocks="2",
        fine_tune="lora",
        lora_rank=2,
        lora_targets="transformer_block_2/.*/(query|key)$",
        validation_split=0.25,
        augment="",
        verbose=0,
        plan="fixed",
        export="saved_model,tflite" if keras.backend.backend() == "tensorflow" else "",
    )
    results = app.run(config)
    out = tmp_path / "out"
    with h5py.File(out / "adapter.weights.h5") as f:
        metadata = json.loads(f.attrs["metadata"])
    assert metadata["backbone"] == config.backbone
    assert [layer.rsplit("/", 1)[-1] for layer in metadata["layers"]] == ["key", "query"]
    assert all(layer.startswith("vit_encoder/transformer_block_2/") for layer in metadata["layers"])
    assert json.loads((out / "config.json").read_text())["lora_targets"] == config.lora_targets
    if keras.backend.backend() == "tensorflow":
        assert (out / "saved_model" / "saved_model.pb").is_file()
        assert (out / "model.tflite").stat().st_size > 0
        assert {"saved_model", "tflite"} <= set(results["exports"])
    loaded = kt.load_model(out / "model.keras")
    assert loaded.backbone_name == config.backbone
