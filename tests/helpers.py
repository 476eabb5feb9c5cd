"""Plain helpers that test modules share with the scripts they run in subprocesses.

A subprocess has no pytest fixtures: its script puts tests/ on `sys.path` and imports what
it needs from here. Everything else shared between test files is a fixture in conftest.py.
"""

import copy

import keras
import numpy as np
import tensorflow as tf

import keras_transfer as kt
from keras_transfer import heads
from keras_transfer.backbones import registry as backbones
from keras_transfer.utils import distribute

__all__ = [
    "DOMAIN_SIZE",
    "KERAS_HUB_SIZE",
    "REG_SCALE",
    "TINY_KERAS_HUB_CLASSES",
    "TRAINING_OFFSET",
    "export_tiny_module",
    "hub_classifier",
    "hub_inputs",
    "shifted_task",
    "tiny_config",
    "tiny_keras_hub_model",
    "train_plain_model",
    "train_two_phase_cached",
    "two_conv_classifier",
]

# --- a tiny TF Hub-style SavedModel -----------------------------------------------------

TRAINING_OFFSET = 100.0
REG_SCALE = 0.01


def export_tiny_module(path, reusable_api=True):
    """A tf.Module-style SavedModel: 5 variables (one non-trainable), a training-only path.

    `__call__(inputs, training)`: with `training=True` it updates `moving_mean` and adds
    TRAINING_OFFSET to the output. With `reusable_api` it has the TF Hub reusable-SavedModel
    attributes (`variables`, `trainable_variables`, `regularization_losses`).
    """
    rng = np.random.RandomState(0)
    w1 = tf.Variable(rng.normal(size=(4, 8)).astype("float32"), name="stem/dense/kernel")
    b1 = tf.Variable(np.full(8, 0.1, "float32"), name="stem/dense/bias")
    gamma = tf.Variable(np.ones(8, "float32"), name="block_1/BatchNorm/gamma")
    moving = tf.Variable(
        np.zeros(8, "float32"), trainable=False, name="block_1/BatchNorm/moving_mean"
    )
    w2 = tf.Variable(rng.normal(size=(8, 3)).astype("float32"), name="block_2/dense/kernel")

    @tf.function
    def call(inputs, training=False):
        h = tf.nn.relu(tf.matmul(inputs, w1) + b1)
        if training:
            moving.assign(0.9 * moving + 0.1 * tf.reduce_mean(h, axis=0))
            return tf.matmul(h * gamma, w2) + TRAINING_OFFSET
        return tf.matmul(h * gamma - moving, w2)

    spec = tf.TensorSpec([None, 4], tf.float32)
    call.get_concrete_function(spec, training=True)
    call.get_concrete_function(spec, training=False)
    root = tf.__internal__.tracking.AutoTrackable()
    root.__call__ = call
    if reusable_api:
        root.variables = [w1, b1, gamma, moving, w2]
        root.trainable_variables = [w1, b1, gamma, w2]
        regularization = tf.function(lambda: REG_SCALE * tf.reduce_sum(w2**2), input_signature=[])
        root.regularization_losses = [regularization]
    else:
        root.weights = [w1, b1, gamma, moving, w2]
    tf.saved_model.save(root, str(path))
    return str(path)


def hub_inputs(n=8, seed=0):
    """`n` inputs of the tiny SavedModel: uniform in [-1, 1], shape (n, 4)."""
    return np.random.RandomState(seed).uniform(-1, 1, (n, 4)).astype("float32")


def hub_classifier(path, **kwargs):
    """A 2-class classifier (no dropout) on the SavedModel at `path`; `kwargs` go to
    `create_backbone`."""
    backbone = backbones.create_backbone(f"hub:{path}", **kwargs)
    return heads.create_classifier(backbone, 2, head={"dropout": 0.0})


# --- domain adaptation ------------------------------------------------------------------

DOMAIN_SIZE = 16


def two_conv_classifier(dropout=0.0):
    """A two-conv backbone and an average-pooling head: a `TransferClassifier` in ms."""
    inputs = keras.Input((DOMAIN_SIZE, DOMAIN_SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_b")(x)
    backbone = keras.Model(inputs, x, name="tiny_backbone")
    head = kt.ClassificationHead(2, dropout=dropout, name="head")
    return kt.TransferClassifier(backbone, head, name="tiny")


def shifted_task(n=64, seed=0):
    """Source: noise images whose class is the red level; target: the same kind of
    images, darker and with a blue cast (the shift)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype("int32")
    images = rng.uniform(0, 120, (n, DOMAIN_SIZE, DOMAIN_SIZE, 3)).astype("float32")
    images[..., 0] += 120 * labels[:, None, None]
    target = rng.uniform(0, 120, (n, DOMAIN_SIZE, DOMAIN_SIZE, 3)).astype("float32")
    target[..., 0] += 120 * labels[:, None, None]
    target = target * 0.5
    target[..., 2] += 100
    return images, labels, target


# --- tiny KerasHub models ---------------------------------------------------------------

KERAS_HUB_SIZE = 32

# family -> the keras_hub.models class of its tiny model (see `tiny_config`).
TINY_KERAS_HUB_CLASSES = {
    "bert": "BertBackbone",
    "clip": "CLIPBackbone",
    "cspnet": "CSPNetBackbone",
    "deit": "DeiTBackbone",
    "densenet": "DenseNetBackbone",
    "dinov2": "DINOV2Backbone",
    "dinov3": "DINOV3Backbone",
    "efficientnet": "EfficientNetBackbone",
    "hgnetv2": "HGNetV2Backbone",
    "mit": "MiTBackbone",
    "mobilenet": "MobileNetBackbone",
    "mobilenetv5": "MobileNetV5Backbone",
    "resnet": "ResNetBackbone",
    "siglip": "SigLIPVisionEncoder",
    "swin_transformer": "SwinTransformerBackbone",
    "vgg": "VGGBackbone",
    "vit": "ViTBackbone",
    "xception": "XceptionBackbone",
}


def tiny_config(family, size=KERAS_HUB_SIZE):
    """Constructor arguments of a tiny random KerasHub model of `family` (a key of
    `TINY_KERAS_HUB_CLASSES`): images of `size` px, a few thousand weights. A CLIP model's
    are `{"vision": ..., "text": ..., "projection_dim": ...}` (its two encoders')."""
    image_shape = (size, size, 3)
    # The transformers' shared shape: 2 blocks of 2 heads, width 16, 8 px patches.
    transformer = dict(patch_size=8, num_layers=2, num_heads=2, hidden_dim=16)
    encoder = dict(transformer, intermediate_dim=32, image_shape=image_shape)
    configs = {
        "bert": dict(
            vocabulary_size=50,
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            max_sequence_length=8,
        ),
        "clip": dict(
            vision=encoder,
            text=dict(
                vocabulary_size=10,
                embedding_dim=8,
                hidden_dim=8,
                num_layers=1,
                num_heads=2,
                intermediate_dim=16,
                max_sequence_length=8,
            ),
            projection_dim=8,
        ),
        "cspnet": dict(
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
        "deit": encoder,
        "densenet": dict(stackwise_num_repeats=[1, 1], growth_rate=4),
        "dinov2": dict(encoder, position_embedding_shape=image_shape),
        "dinov3": encoder,
        "efficientnet": dict(
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
        "hgnetv2": dict(
            depths=[1, 1],
            embedding_size=16,
            hidden_sizes=[16, 32],
            stem_channels=[3, 8, 16],
            hidden_act="relu",
            use_learnable_affine_block=False,
            stackwise_stage_filters=[[16, 8, 16, 1, 1, 3], [16, 8, 32, 1, 1, 3]],
            apply_downsample=[False, True],
            use_lightweight_conv_block=[False, False],
            image_shape=image_shape,
        ),
        "mit": dict(
            layerwise_depths=[1, 1],
            num_layers=2,
            layerwise_num_heads=[1, 1],
            layerwise_sr_ratios=[4, 2],
            max_drop_path_rate=0.0,
            layerwise_patch_sizes=[7, 3],
            layerwise_strides=[4, 2],
            image_shape=image_shape,
            hidden_dims=[8, 16],
        ),
        "mobilenet": dict(
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
            image_shape=image_shape,
        ),
        "mobilenetv5": dict(
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
            image_shape=image_shape,
            stem_size=8,
            use_msfa=False,
        ),
        "resnet": dict(
            input_conv_filters=[64],
            input_conv_kernel_sizes=[3],
            stackwise_num_filters=[64, 16],
            stackwise_num_blocks=[1, 1],
            stackwise_num_strides=[1, 2],
            block_type="basic_block",
        ),
        "siglip": encoder,
        "swin_transformer": dict(
            image_shape=image_shape,
            embed_dim=8,
            depths=(1, 1),
            num_heads=(1, 2),
            window_size=4,
            drop_path=0.0,
        ),
        "vgg": dict(stackwise_num_repeats=[1, 1, 1], stackwise_num_filters=[8, 8, 16]),
        # ViT calls its MLP width mlp_dim.
        "vit": dict(transformer, mlp_dim=32, image_shape=image_shape),
        "xception": dict(
            stackwise_conv_filters=[[8, 8], [16, 16], [16, 16]],
            stackwise_pooling=[False, True, False],
        ),
    }
    return copy.deepcopy(configs[family])


def tiny_keras_hub_model(family, size=KERAS_HUB_SIZE):
    """A tiny random KerasHub model of `family` built from `tiny_config` (needs the
    keras_hub extra)."""
    import keras_hub

    config = tiny_config(family, size)
    if family == "clip":
        # A CLIP preset holds the image-text model; keras_transfer takes its image tower.
        vision = keras_hub.models.CLIPVisionEncoder(**config.pop("vision"))
        text = keras_hub.models.CLIPTextEncoder(**config.pop("text"))
        return keras_hub.models.CLIPBackbone(vision, text, **config)
    return getattr(keras_hub.models, TINY_KERAS_HUB_CLASSES[family])(**config)


# --- distribution -----------------------------------------------------------------------


def train_two_phase_cached(strategy):
    """`fit_two_phase_cached` (cached phase 1, then fine-tuning 2 blocks) of a tiny
    classifier under `strategy`: (weights, history and the largest change of a backbone
    weight). Phase 1 takes all 16 cached feature vectors as one batch and phase 2 reads the
    images unshuffled, so one device and two replicas see the same batches (a reshuffling dataset is iterated in another order under
    MirroredStrategy than on one device)."""
    rng = np.random.default_rng(0)
    labels = (np.arange(16) % 2).astype("int32")
    images = rng.uniform(0, 60, (16, 32, 32, 3)).astype("float32")
    images[labels == 1, ..., 0] += 190
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = kt.create_classifier(
            "mobilenet", 2, head={"dropout": 0.0}, input_shape=(32, 32, 3), weights=None
        )
        # Small moving variances keep a random MobileNet's features from vanishing
        # (~1e-17 with the initial statistics), so that the backbone's updates matter.
        for layer in model.backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_variance.assign(np.full(layer.moving_variance.shape, 0.05))
        before = [np.asarray(w) for w in model.backbone.get_weights()]
        history = kt.fit_two_phase_cached(
            model,
            dataset,
            dataset,
            head_epochs=2,
            fine_tune_epochs=2,
            unfreeze=2,
            head_lr=1e-2,
            fine_tune_lr=1e-3,
            head_batch_size=32,
            verbose=0,
        )
    change = max(
        float(np.abs(np.asarray(a) - b).max()) for a, b in zip(model.backbone.get_weights(), before)
    )
    weights = [np.asarray(w) for w in model.get_weights()]
    return weights, {"phase": list(history.phases), "backbone_change": change, **history.history}


def train_plain_model(strategy=None):
    """A Sequential model trained with `fit` (2 epochs, validation) on one device or under
    `strategy` (made multi-worker ready by `enable_multi_worker_fit`): (weights, history)."""
    strategy = strategy or tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
        model = distribute.enable_multi_worker_fit(model)
        model.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    history = model.fit(dataset, epochs=2, validation_data=dataset, verbose=0)
    return [np.asarray(w) for w in model.get_weights()], history.history
