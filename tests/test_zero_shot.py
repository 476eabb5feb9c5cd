"""Zero-shot classifiers from CLIP and SigLIP presets (`kt.zero_shot_classifier`, the
command's `--zero_shot`) without downloads: tiny random image-text models with handmade
tokenizers (a character-level CLIP byte-pair vocabulary; a word-level SentencePiece model
trained here for SigLIP), saved with `save_to_preset` beside their preprocessor and
ImageConverter."""

import io
import json
import math

import keras
import numpy as np
import pytest
from conftest import write_image_folder

import keras_transfer as kt
from keras_transfer.heads import zero_shot

keras_hub = pytest.importorskip("keras_hub", reason="needs the keras_hub extra (keras-hub)")

SIZE = 32
CLASSES = ["ants", "bees", "golden_retriever"]
TEMPLATES = ("a photo of a {}.", "art of the {}.")
SCALE = {"scale": 1 / 127.5, "offset": -1.0}
# Every word a prompt here can hold: the default templates, the classes, the command's.
_WORDS = " ".join(zero_shot.DEFAULT_TEMPLATES + TEMPLATES).replace("{}", "")
_WORDS += " ants bees golden retriever cats dogs"


def _clip_tokenizer():
    # Characters, each alone and ending a word, and one merge (the tokenizer needs one);
    # the end token gets the largest id, as in CLIP's vocabulary: its text pooler takes
    # the argmax position.
    characters = sorted(set(_WORDS.replace(" ", "")) | set("abcdefghijklmnopqrstuvwxyz"))
    tokens = ["<|startoftext|>"] + characters + [f"{c}</w>" for c in characters] + ["th"]
    vocabulary = {token: i for i, token in enumerate(tokens + ["<|endoftext|>"])}
    return keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=["t h"])


def _siglip_tokenizer():
    import sentencepiece

    words = sorted(set(_WORDS.replace(".", "").lower().split()))
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(words * 4),
        model_writer=proto,
        vocab_size=len(words) + 3,
        model_type="WORD",
        pad_id=-1,
        bos_id=-1,
        eos_id=1,
        unk_id=0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return keras_hub.models.SigLIPTokenizer(proto=proto.getvalue())


def _clip():
    tokenizer = _clip_tokenizer()
    vision = keras_hub.models.CLIPVisionEncoder(8, 16, 2, 2, 32, image_shape=(SIZE, SIZE, 3))
    text = keras_hub.models.CLIPTextEncoder(
        tokenizer.vocabulary_size(), 8, 8, 1, 2, 16, max_sequence_length=32
    )
    model = keras_hub.models.CLIPBackbone(vision, text, projection_dim=8)
    model.clip_head.logit_scale.assign(math.log(20.0))
    return model, keras_hub.models.CLIPPreprocessor(tokenizer, sequence_length=32)


def _siglip():
    tokenizer = _siglip_tokenizer()
    vision = keras_hub.models.SigLIPVisionEncoder(8, 16, 2, 2, 32, image_shape=(SIZE, SIZE, 3))
    text = keras_hub.models.SigLIPTextEncoder(
        tokenizer.vocabulary_size(), 16, 16, 1, 2, 32, max_sequence_length=16
    )
    model = keras_hub.models.SigLIPBackbone(vision, text)
    # Away from the initial scale 1 and bias 0, so that both are seen to be used.
    model.siglip_head.logit_scale.assign(math.log(10.0))
    model.siglip_head.logit_bias.assign(-2.0)
    return model, keras_hub.models.SigLIPPreprocessor(tokenizer, sequence_length=16)


@pytest.fixture(scope="session")
def preset(tmp_path_factory):
    """`preset(family)` -> a preset folder of a tiny random CLIP or SigLIP model, with its
    preprocessor (tokenizer) and an ImageConverter (scale 1/127.5, offset -1)."""
    root = tmp_path_factory.mktemp("zero_shot_presets")
    made = {}

    def make(family):
        if family not in made:
            keras.utils.set_random_seed(3)
            folder = str(root / family)
            model, preprocessor = {"clip": _clip, "siglip": _siglip}[family]()
            model.save_to_preset(folder)
            preprocessor.save_to_preset(folder)
            keras_hub.layers.ImageConverter(image_size=(SIZE, SIZE), **SCALE).save_to_preset(folder)
            made[family] = folder
        return made[family]

    return make


def _images(n=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def _full(folder):
    return keras_hub.models.Backbone.from_preset(folder)


def _unit(x):
    x = np.asarray(keras.ops.convert_to_numpy(x), dtype="float64")
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _expected_class_embeddings(folder, family, class_names, templates):
    """Each prompt embedded by the text tower, normalised; averaged per class, normalised."""
    full = _full(folder)
    cls = getattr(keras_hub.models, zero_shot.ZERO_SHOT_FAMILIES[family][1])
    preprocessor = cls.from_preset(folder, image_converter=None)
    prompts = [t.format(n.replace("_", " ")) for n in class_names for t in templates]
    tokens = preprocessor({"images": None, "prompts": np.array(prompts)})
    embedded = _unit(full.get_text_embeddings(tokens["token_ids"]))
    per_class = embedded.reshape(len(class_names), len(templates), -1)
    return _unit(per_class.mean(axis=1)), full


def _scale_and_bias(full, family):
    head = full.clip_head if family == "clip" else full.siglip_head
    bias = float(keras.ops.convert_to_numpy(head.logit_bias)) if family == "siglip" else 0.0
    return float(np.exp(keras.ops.convert_to_numpy(head.logit_scale))), bias


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_head_is_the_normalised_prompt_embeddings_and_predicts_by_cosine(preset, family):
    folder = preset(family)
    model = kt.zero_shot_classifier(f"keras_hub:{folder}", CLASSES, TEMPLATES)
    expected, full = _expected_class_embeddings(folder, family, CLASSES, TEMPLATES)
    scale, bias = _scale_and_bias(full, family)
    assert scale == pytest.approx(20.0 if family == "clip" else 10.0, rel=1e-5)

    head = model.head
    assert isinstance(head, kt.ZeroShotHead) and model.class_names == CLASSES
    kernel = keras.ops.convert_to_numpy(head.output_dense.kernel)
    np.testing.assert_allclose(kernel.T / scale, expected, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head.output_dense.bias), bias)
    assert len(model.weights) == len(model.backbone.weights) + len(head.weights)  # no text tower

    # The image-text model's own image embeddings, cosine against the class embeddings.
    images = _images()
    image_embeddings = _unit(full.get_vision_embeddings(images * SCALE["scale"] - 1.0))
    logits = scale * image_embeddings @ expected.T + bias
    probabilities = keras.ops.convert_to_numpy(model(images))
    np.testing.assert_allclose(probabilities, keras.ops.softmax(logits), atol=1e-4)
    np.testing.assert_array_equal(probabilities.argmax(-1), logits.argmax(-1))


def test_default_templates_and_a_backbone_already_built(preset):
    folder = preset("clip")
    backbone = kt.create_backbone(f"keras_hub:{folder}")
    model = kt.zero_shot_classifier(backbone, CLASSES[:2])
    assert model.backbone is backbone.model and model.backbone_name == backbone.name
    expected, full = _expected_class_embeddings(
        folder, "clip", CLASSES[:2], zero_shot.DEFAULT_TEMPLATES
    )
    kernel = keras.ops.convert_to_numpy(model.head.output_dense.kernel)
    np.testing.assert_allclose(kernel.T / _scale_and_bias(full, "clip")[0], expected, atol=1e-5)
    # CLIP's image projection is the head's first layer, with the preset's weights.
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.head.projection.kernel),
        keras.ops.convert_to_numpy(full.vision_projection.kernel),
    )


@pytest.mark.slow
def test_fine_tuning_moves_the_head_and_wise_ft_interpolates_from_zero_shot(preset, tmp_path):
    import tensorflow as tf

    model = kt.zero_shot_classifier(f"keras_hub:{preset('siglip')}", CLASSES, TEMPLATES)
    images, labels = _images(12, seed=1), np.arange(12) % 3
    zero_shot_weights = model.get_weights()
    zero_shot_probabilities = keras.ops.convert_to_numpy(model(images))
    kernel = keras.ops.convert_to_numpy(model.head.output_dense.kernel).copy()

    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    kt.fit_two_phase(model, data, data, head_epochs=1, fine_tune_epochs=1, head_lr=1e-1, verbose=0)
    moved = keras.ops.convert_to_numpy(model.head.output_dense.kernel)
    assert np.abs(moved - kernel).max() > 1e-3
    fine_tuned = model.get_weights()

    # alpha 0 is the zero-shot model, alpha 1 the fine-tuned one, 0.5 halfway.
    kt.interpolate_weights(model, zero_shot_weights, 0.0, end=fine_tuned)
    np.testing.assert_allclose(model(images), zero_shot_probabilities, atol=1e-5)
    kt.interpolate_weights(model, zero_shot_weights, 0.5, end=fine_tuned)
    halfway = keras.ops.convert_to_numpy(model.head.output_dense.kernel)
    np.testing.assert_allclose(halfway, (kernel + moved) / 2, atol=1e-5)
    chosen = kt.wise_ft(model, zero_shot_weights, data, alphas=(0.0, 1.0))
    assert set(chosen.scores) == {0.0, 1.0}


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_keras_file_round_trip_gives_the_same_predictions(preset, family, tmp_path):
    model = kt.zero_shot_classifier(f"keras_hub:{preset(family)}", CLASSES, TEMPLATES)
    path = tmp_path / "zero_shot.keras"
    kt.save_model(model, path)
    loaded = kt.load_model(path)
    images = _images(3, seed=2)
    np.testing.assert_allclose(loaded(images), model(images), atol=1e-6)
    assert type(loaded.head) is kt.ZeroShotHead
    assert loaded.head.projection_units == model.head.projection_units
    assert loaded.class_names == CLASSES and loaded.backbone_name == model.backbone_name


def test_wrong_family_and_bad_prompts_are_refused_clearly(preset, tmp_path):
    vit = keras_hub.models.ViTBackbone(
        image_shape=(SIZE, SIZE, 3),
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
    )
    vit.save_to_preset(str(tmp_path / "vit"))
    keras_hub.layers.ImageConverter(image_size=(SIZE, SIZE), **SCALE).save_to_preset(
        str(tmp_path / "vit")
    )
    with pytest.raises(ValueError, match="is a vit image backbone, which has no text tower"):
        kt.zero_shot_classifier(f"keras_hub:{tmp_path / 'vit'}", CLASSES)
    with pytest.raises(ValueError, match="needs the image-text model of a CLIP or SigLIP"):
        kt.zero_shot_classifier(
            kt.create_backbone("mobilenet", input_shape=(SIZE, SIZE, 3), weights=None), CLASSES
        )
    with pytest.raises(ValueError, match=r"exactly one \{\}"):
        kt.zero_shot_classifier(f"keras_hub:{preset('clip')}", CLASSES, ["a photo"])
    with pytest.raises(ValueError, match="duplicates"):
        kt.zero_shot_classifier(f"keras_hub:{preset('clip')}", ["ants", "ants"])


def test_command_refuses_zero_shot_without_an_image_text_backbone(tmp_path):
    from keras_transfer.apps import image_config
    from keras_transfer.apps.config import ConfigError

    with pytest.raises(ConfigError, match="zero_shot needs a CLIP or SigLIP.*--backbone"):
        image_config.Config(data_dir="d", model_dir="m", backbone="mobilenet", zero_shot=True)


@pytest.mark.slow
def test_command_scores_zero_shot_before_training_and_fine_tunes_from_it(
    preset, tmp_path, tiny_run_config
):
    from keras_transfer.apps import image_classifier as app
    from keras_transfer.apps import image_model

    write_image_folder(tmp_path / "images", {"ants": 8, "bees": 8}, size=(SIZE, SIZE))
    config = tiny_run_config(
        tmp_path / "images",
        tmp_path / "out",
        backbone=f"keras_hub:{preset('clip')}",
        weights="imagenet",  # the preset's own weights
        image_size=0,
        zero_shot=True,
        wise_ft=True,
        test_split=0.25,
    )
    results = app.run(config)

    scored = results["zero_shot"]
    assert scored["split"] == "validation"
    assert scored["num_images"] == results["num_validation"]
    assert scored["accuracy"] * scored["num_images"] == pytest.approx(
        np.trace(scored["confusion_matrix"])
    )
    # The test split is scored like the trained model's, with the same keys.
    assert set(scored["test"]) == set(results["test"])
    assert scored["test"]["num_images"] == results["num_test"] > 0
    assert results["wise_ft"]["start"] == "zero_shot"

    # It is the zero-shot classifier's own score on the run's validation images.
    data = image_model.load_data(config, SIZE, drop_remainder=False)
    model = kt.zero_shot_classifier(f"keras_hub:{preset('clip')}", data.class_names)
    true, predicted = kt.reports.predict_labels(model, data.validation)
    assert scored["accuracy"] == pytest.approx(np.mean(true == predicted))
    # Training started from it: the saved model has its head, and results.json says so.
    assert type(kt.load_model(tmp_path / "out" / "model.keras").head) is kt.ZeroShotHead
    with open(tmp_path / "out" / "results.json", encoding="utf-8") as f:
        assert json.load(f)["zero_shot"]["accuracy"] == scored["accuracy"]
