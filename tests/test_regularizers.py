import keras
import numpy as np
import pytest
from conftest import make_tiny_classifier

import keras_transfer as kt
from keras_transfer.peft import l2sp as regularizers
from keras_transfer.training import callbacks as callbacks_lib


def mini_model():
    backbone = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(16)],
        name="mini_backbone",
    )
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(1, name="new_head")(backbone(inputs))
    return keras.Model(inputs, outputs), backbone


def distance_from(start, variables):
    return float(sum(np.sum((v.numpy() - s) ** 2) for v, s in zip(variables, start, strict=True)))


def train(alpha, beta, weights):
    model, backbone = mini_model()
    model.set_weights(weights)
    if alpha or beta:
        regularizers.apply_l2sp(model, alpha=alpha, beta=beta, backbone=backbone)
    model.compile(optimizer=keras.optimizers.Adam(0.03), loss="mse")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (np.sin(3 * x[:, :1]) * 5 + x[:, 1:2] ** 2).astype("float32")  # far from the start
    model.fit(x, y, batch_size=16, epochs=15, verbose=0)
    return model, backbone


def test_l2sp_pulls_weights_back_toward_their_start():
    keras.utils.set_random_seed(3)
    model, backbone = mini_model()
    weights = model.get_weights()
    start = [v.numpy().copy() for v in backbone.trainable_variables]
    head_start = model.get_layer("new_head").kernel.numpy().copy()

    plain, plain_backbone = train(0.0, 0.0, weights)
    l2sp, l2sp_backbone = train(0.5, 0.05, weights)
    plain_distance = distance_from(start, plain_backbone.trainable_variables)
    l2sp_distance = distance_from(start, l2sp_backbone.trainable_variables)
    assert plain_distance > 0.1
    assert l2sp_distance < 0.3 * plain_distance, (l2sp_distance, plain_distance)
    # beta alone: plain L2 on the head kernel (toward 0, not toward its start).
    head_only, _ = train(0.0, 0.5, weights)
    plain_norm = np.sum(plain.get_layer("new_head").kernel.numpy() ** 2)
    head_only_norm = np.sum(head_only.get_layer("new_head").kernel.numpy() ** 2)
    assert head_only_norm < 0.5 * plain_norm, (head_only_norm, plain_norm)
    assert not np.allclose(head_start, 0)


def test_penalty_counts_only_trainable_weights_of_a_partly_frozen_backbone():
    model = make_tiny_classifier()
    kt.unfreeze(model, 1)  # conv_dw_13 only; its BatchNorm stays frozen
    counts = regularizers.apply_l2sp(model, alpha=0.5, beta=0.1)
    # Every conv kernel and BatchNorm scale/offset of the backbone, all in layer configs.
    assert counts["backbone"] == 13 * 6 + 3 and counts["head"] == 1 and counts["unsaved"] == 0
    head_kernel = model.head.trainable_variables[0]
    assert len(model.losses) == 3  # conv_dw_13 and conv_pw_13 kernels, head kernel
    total = float(sum(float(loss) for loss in model.losses))
    assert total == pytest.approx(0.1 * float(np.sum(head_kernel.numpy() ** 2)), rel=1e-5)

    kernel = model.backbone.get_layer("conv_pw_13").kernel
    kernel.assign(kernel.numpy() + 0.1)
    expected = 0.5 * kernel.numpy().size * 0.01 + 0.1 * float(np.sum(head_kernel.numpy() ** 2))
    assert float(sum(float(loss) for loss in model.losses)) == pytest.approx(expected, rel=1e-4)

    kt.unfreeze(model, 2)  # blocks unfrozen later join the penalty
    assert len(model.losses) == 5


def test_penalty_enters_fit_once_its_block_is_unfrozen():
    model = make_tiny_classifier()
    regularizers.apply_l2sp(model, alpha=1.0, beta=0.0)
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.array([0, 1] * 4)
    kernel = model.backbone.get_layer("conv_pw_13").kernel
    kernel.assign_add(np.full(kernel.shape, 0.1, "float32"))

    def one_epoch_loss():
        model.compile(optimizer=keras.optimizers.SGD(0.0))  # lr 0: weights stay put
        return model.fit(x, y, epochs=1, batch_size=8, verbose=0).history["loss"][0]

    kt.freeze(model)
    frozen = one_epoch_loss()
    kt.unfreeze(model, 1)
    top_block_trainable = one_epoch_loss()
    # Only a trainable block pays its distance from the reference: 0.1 per kernel entry.
    penalty = 1.0 * np.prod(kernel.shape) * 0.01
    assert top_block_trainable - frozen == pytest.approx(penalty, rel=1e-3)


@pytest.mark.tensorflow_only
def test_penalty_enters_fit_and_works_with_gradual_unfreezing():
    model = make_tiny_classifier()
    regularizers.apply_l2sp(model, alpha=1.0, beta=0.0)
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # lr 0: weights stay at the reference
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.array([0, 1] * 4)
    model.backbone.get_layer("conv_pw_13").kernel.assign_add(
        np.full(model.backbone.get_layer("conv_pw_13").kernel.shape, 0.1, "float32")
    )
    history = model.fit(
        x,
        y,
        epochs=2,
        batch_size=8,
        callbacks=[callbacks_lib.GradualUnfreezing({1: 1})],
        verbose=0,
    )
    penalty = 1.0 * model.backbone.get_layer("conv_pw_13").kernel.numpy().size * 0.01
    # Epoch 0: backbone frozen, no penalty. Epoch 1: the top block joins and pays it.
    assert history.history["loss"][1] - history.history["loss"][0] == pytest.approx(
        penalty, rel=1e-3
    )


def test_l2sp_reference_is_saved_and_kept_when_reapplied(tmp_path):
    model = make_tiny_classifier()
    kt.unfreeze(model, 1)
    regularizers.apply_l2sp(model, alpha=0.5, beta=0.1)
    pretrained = model.backbone.get_layer("conv_pw_13").kernel.numpy().copy()
    model.backbone.get_layer("conv_pw_13").kernel.assign(pretrained + 0.2)  # "fine-tuned"
    model.save(tmp_path / "model.keras")

    restored = keras.saving.load_model(tmp_path / "model.keras")
    layer = restored.backbone.get_layer("conv_pw_13")
    assert isinstance(layer.kernel.regularizer, regularizers.L2SP)
    np.testing.assert_array_equal(layer.kernel.regularizer.reference, pretrained)
    # L2-SP on the unfrozen block's two kernels and the head's L2, all from the config.
    assert len(restored.losses) == 3
    head_kernel = restored.head.output_dense.kernel.numpy()
    restored_penalty = float(sum(float(loss) for loss in restored.losses))
    assert restored_penalty == pytest.approx(
        0.5 * pretrained.size * 0.04 + 0.1 * float(np.sum(head_kernel**2)), rel=1e-4
    )
    counts = regularizers.apply_l2sp(restored, alpha=0.5, beta=0.1)
    assert counts["head"] == 1 and len(restored.losses) == 3
    np.testing.assert_array_equal(layer.kernel.regularizer.reference, pretrained)
    config = keras.regularizers.serialize(layer.kernel.regularizer)
    again = keras.regularizers.deserialize(config)
    np.testing.assert_array_equal(again.reference, pretrained)


def test_bad_input_is_a_clear_error():
    model, backbone = mini_model()
    with pytest.raises(ValueError, match="alpha"):
        regularizers.apply_l2sp(model, alpha=-1.0, backbone=backbone)
    with pytest.raises(ValueError, match="not backbone weights"):
        regularizers.apply_l2sp(model, backbone=backbone, reference={"nope/kernel": np.zeros(3)})
    path = backbone.layers[0].kernel.path
    with pytest.raises(ValueError, match="shape"):
        regularizers.apply_l2sp(model, backbone=backbone, reference={path: np.zeros(3)})
