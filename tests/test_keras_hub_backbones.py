"""KerasHub image backbones (`create_backbone("keras_hub:<preset folder>")`) without downloads:
tiny random backbones of every supported family, saved with `save_to_preset` beside an
ImageConverter, then used through keras_transfer: blocks, preprocessing, pooled features,
freezing, per-block outputs, LoRA adapters, `.keras` files, SavedModel export, mixed
precision and the command."""

import json
import sys

import h5py
import keras
import numpy as np
import pytest
from conftest import write_image_folder

import keras_transfer as kt
from keras_transfer.backbones.keras_hub import families

keras_hub = pytest.importorskip("keras_hub", reason="needs the keras_hub extra (keras-hub)")

SIZE = 32


def _vit():
    return keras_hub.models.ViTBackbone(
        image_shape=(SIZE, SIZE, 3),
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
    )


def _clip():
    # A CLIP preset holds the image-text model; keras_transfer takes its image tower.
    vision = keras_hub.models.CLIPVisionEncoder(8, 16, 2, 2, 32, image_shape=(SIZE, SIZE, 3))
    text = keras_hub.models.CLIPTextEncoder(10, 8, 8, 1, 2, 16, max_sequence_length=8)
    return keras_hub.models.CLIPBackbone(vision, text, projection_dim=8)


# family -> a tiny random backbone of it (all at 32 px, a few thousand weights).
BUILDERS = {
    "clip": _clip,
    "cspnet": lambda: keras_hub.models.CSPNetBackbone(
        stem_filters=8,
        stem_kernel_size=3,
        stem_strides=1,
        stackwise_depth=[1, 1],
        stackwise_strides=2,
        stackwise_num_filters=[8, 16],
        block_type="dark_block",
        stage_type="csp",
        down_growth=True,
        bottle_ratio=(0.5, 1.0),
        block_ratio=(1.0, 0.5),
        expand_ratio=(2.0, 1.0),
        stem_padding="same",
    ),
    "deit": lambda: keras_hub.models.DeiTBackbone(
        image_shape=(SIZE, SIZE, 3),
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
    ),
    "densenet": lambda: keras_hub.models.DenseNetBackbone(
        stackwise_num_repeats=[1, 1], growth_rate=4
    ),
    "dinov2": lambda: keras_hub.models.DINOV2Backbone(
        patch_size=8,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(SIZE, SIZE, 3),
        position_embedding_shape=(SIZE, SIZE, 3),
    ),
    "dinov3": lambda: keras_hub.models.DINOV3Backbone(
        patch_size=8,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(SIZE, SIZE, 3),
    ),
    "efficientnet": lambda: keras_hub.models.EfficientNetBackbone(
        stackwise_kernel_sizes=[3, 3],
        stackwise_num_repeats=[1, 1],
        stackwise_input_filters=[8, 8],
        stackwise_output_filters=[8, 16],
        stackwise_expansion_ratios=[1, 2],
        stackwise_squeeze_and_excite_ratios=[0.0, 0.25],
        stackwise_strides=[1, 2],
        stackwise_block_types=["fused", "unfused"],
        stackwise_force_input_filters=[0, 0],
        stackwise_nores_option=[False, False],
        width_coefficient=1.0,
        depth_coefficient=1.0,
    ),
    "hgnetv2": lambda: keras_hub.models.HGNetV2Backbone(
        depths=[1, 1],
        embedding_size=16,
        hidden_sizes=[16, 32],
        stem_channels=[3, 8, 16],
        hidden_act="relu",
        use_learnable_affine_block=False,
        stackwise_stage_filters=[[16, 8, 16, 1, 1, 3], [16, 8, 32, 1, 1, 3]],
        apply_downsample=[False, True],
        use_lightweight_conv_block=[False, False],
        image_shape=(SIZE, SIZE, 3),
    ),
    "mit": lambda: keras_hub.models.MiTBackbone(
        layerwise_depths=[1, 1],
        num_layers=2,
        layerwise_num_heads=[1, 1],
        layerwise_sr_ratios=[4, 2],
        max_drop_path_rate=0.0,
        layerwise_patch_sizes=[7, 3],
        layerwise_strides=[4, 2],
        image_shape=(SIZE, SIZE, 3),
        hidden_dims=[8, 16],
    ),
    "mobilenet": lambda: keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[16], [32]],
        stackwise_num_blocks=[1, 1],
        stackwise_num_filters=[[8], [16]],
        stackwise_kernel_size=[[3], [3]],
        stackwise_num_strides=[[2], [2]],
        stackwise_se_ratio=[[None], [0.25]],
        stackwise_activation=[["relu"], ["hard_swish"], ["hard_swish"]],
        stackwise_padding=[[1], [1]],
        output_num_filters=32,
        depthwise_filters=8,
        depthwise_stride=2,
        depthwise_residual=False,
        squeeze_and_excite=0.5,
        last_layer_filter=32,
        input_num_filters=8,
        image_shape=(SIZE, SIZE, 3),
    ),
    "mobilenetv5": lambda: keras_hub.models.MobileNetV5Backbone(
        stackwise_block_types=[["er"], ["uir", "uir"]],
        stackwise_num_blocks=[1, 2],
        stackwise_num_filters=[[8], [16, 16]],
        stackwise_strides=[[2], [2, 1]],
        stackwise_act_layers=[["relu"], ["relu", "relu"]],
        stackwise_exp_ratios=[[2.0], [2.0, 2.0]],
        stackwise_se_ratios=[[0.0], [0.0, 0.0]],
        stackwise_dw_kernel_sizes=[[0], [3, 3]],
        stackwise_dw_start_kernel_sizes=[[0], [0, 0]],
        stackwise_dw_end_kernel_sizes=[[0], [0, 0]],
        stackwise_exp_kernel_sizes=[[3], [0, 0]],
        stackwise_pw_kernel_sizes=[[1], [0, 0]],
        stackwise_num_heads=[[0], [0, 0]],
        stackwise_key_dims=[[0], [0, 0]],
        stackwise_value_dims=[[0], [0, 0]],
        stackwise_kv_strides=[[0], [0, 0]],
        stackwise_use_cpe=[[False], [False, False]],
        image_shape=(SIZE, SIZE, 3),
        stem_size=8,
        use_msfa=False,
    ),
    "resnet": lambda: keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
    ),
    "siglip": lambda: keras_hub.models.SigLIPVisionEncoder(
        8, 16, 2, 2, 32, image_shape=(SIZE, SIZE, 3)
    ),
    "swin_transformer": lambda: keras_hub.models.SwinTransformerBackbone(
        image_shape=(SIZE, SIZE, 3),
        embed_dim=8,
        depths=(1, 1),
        num_heads=(1, 2),
        window_size=4,
        drop_path=0.0,
    ),
    "vgg": lambda: keras_hub.models.VGGBackbone(
        stackwise_num_repeats=[1, 1, 1], stackwise_num_filters=[8, 8, 16]
    ),
    "vit": _vit,
    "xception": lambda: keras_hub.models.XceptionBackbone(
        stackwise_conv_filters=[[8, 8], [16, 16], [16, 16]],
        stackwise_pooling=[False, True, False],
    ),
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
    with pytest.raises(ValueError, match="name no LoRA-capable layer"):
        kt.enable_lora(
            kt.create_classifier(f"keras_hub:{preset('vit')}", 3), targets=["no_such/.*x"]
        )


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
    keras_hub.models.BertBackbone(
        vocabulary_size=10,
        num_layers=1,
        num_heads=1,
        hidden_dim=4,
        intermediate_dim=8,
        max_sequence_length=8,
    ).save_to_preset(str(tmp_path / "bert"))
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
    assert metadata["layers"] and all(
        layer.startswith("vit_encoder/transformer_block_") for layer in metadata["layers"]
    )
    if keras.backend.backend() == "tensorflow":
        assert (out / "saved_model" / "saved_model.pb").is_file()
        assert (out / "model.tflite").stat().st_size > 0
        assert {"saved_model", "tflite"} <= set(results["exports"])
    loaded = kt.load_model(out / "model.keras")
    assert loaded.backbone_name == config.backbone
