"""Errors that come first and read in one line: every setting is checked before the
backbone is built or an image is read, a batch that cannot fit in memory is refused before
the data is loaded, a `.keras` file with an unknown class names it, and two config keys
for one setting are an error."""

import json
import logging
import re
import zipfile

import keras
import pytest

import keras_transfer as kt
from keras_transfer import data as data_lib
from keras_transfer.apps import config as config_lib
from keras_transfer.apps import image_classifier
from keras_transfer.apps import image_config
from keras_transfer.utils import memory


@pytest.fixture
def no_work(monkeypatch):
    """Building a backbone or loading data fails the test: checks must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the settings were checked")

    monkeypatch.setattr(data_lib, "image_folder_dataset", forbidden)
    monkeypatch.setattr(data_lib, "tfds_dataset", forbidden)
    return forbidden


def _config(tmp_path, **overrides):
    (tmp_path / "images").mkdir(exist_ok=True)
    settings = dict(
        data_dir=str(tmp_path / "images"),
        model_dir=str(tmp_path / "out"),
        backbone="mobilenet",
        weights=None,
        image_size=32,
        batch_size=8,
        plan="fixed",
        verbose=0,
    )
    settings.update(overrides)
    return image_config.Config(**settings)


@pytest.mark.parametrize(
    "overrides, says",
    [
        ({"head_lr": -1e-3}, "head_lr=-0.001 (--head_lr): head_lr must be > 0"),
        ({"head_lr": 0.0}, "head_lr must be > 0"),
        ({"fine_tune_lr": -2e-5}, "fine_tune_lr must be > 0"),
        ({"image_size": -1}, "image_size must be >= 0"),
        ({"validation_split": 1.5}, "validation_split must be in [0, 1)"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
        ({"max_pixels": -1}, "max_pixels must be >= 0"),
        ({"fine_tune": "lora", "lora_rank": 0}, "lora_rank must be an integer >= 1"),
        (
            {"lora_targets": "conv_pw_13"},
            "lora_targets='conv_pw_13' chooses the layers LoRA adapts: add fine_tune=lora",
        ),
        (
            {"fine_tune": "lora", "lora_targets": "conv_pw_13,block_(1/.*"},
            "lora_targets entry 'block_(1/.*' is not a valid regular expression",
        ),
        ({"augment": "flip,zoomm"}, "Unknown augmentation 'zoomm'"),
        ({"target_dir": "/no/such/folder"}, "target_dir='/no/such/folder' (--target_dir) is not"),
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, monkeypatch, no_work, overrides, says):
    monkeypatch.setattr(kt, "create_backbone", no_work)
    with pytest.raises((config_lib.ConfigError, FileNotFoundError)) as error:
        image_classifier.run(_config(tmp_path, **overrides))
    assert says in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_model_dir_that_is_a_file_is_refused_before_any_work(tmp_path, monkeypatch, no_work):
    monkeypatch.setattr(kt, "create_backbone", no_work)
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(
        config_lib.ConfigError, match=r"model_dir=.*taken' \(--model_dir\) is a file"
    ):
        image_classifier.run(_config(tmp_path, model_dir=str(tmp_path / "taken")))
    with pytest.raises(config_lib.ConfigError, match=r"lies under .*taken', which is a file"):
        image_classifier.run(_config(tmp_path, model_dir=str(tmp_path / "taken" / "run")))
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_two_config_keys_for_one_setting_are_an_error(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"backbone_lr": 1e-5, "fine_tune_lr": 2e-5}))
    with pytest.raises(
        config_lib.ConfigError, match=r"sets fine_tune_lr twice, as 'backbone_lr' and"
    ):
        image_config.load_config(str(path), {})
    path.write_text(json.dumps({"head_epochs": 3, "epochs": {"head": 5}}))
    with pytest.raises(config_lib.ConfigError, match=r"'head_epochs' and as 'epochs.head'"):
        image_config.load_config(str(path), {})


def test_activation_memory_from_the_layer_shapes():
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8 x 8 x 4 = 256 values
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(features))
    estimate = memory.activation_memory(model, batch_size=2, bytes_per_value=4)
    # The largest layer: the convolution's 192 input and 256 output values.
    assert estimate.forward_bytes == (192 + 256) * 2 * 4 == 3584
    # Kept for backpropagation: every layer's output (the input layer's 192 included).
    assert estimate.training_bytes == (192 + 256 + 4) * 2 * 4 == 3616
    assert memory.check_activation_memory(model, 2, available=10**6) is None
    warning = memory.check_activation_memory(model, 2, available=3600)
    assert "keeps about 3.6 kB of activations for backpropagation" in warning
    with pytest.raises(memory.InsufficientMemoryError, match=r"at most 1 images fits"):
        memory.check_activation_memory(model, 2, available=3000)
    with pytest.raises(memory.InsufficientMemoryError, match="not even one image fits"):
        memory.check_activation_memory(model, 2, available=1000)


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_the_data(
    tmp_path, monkeypatch, no_work, caplog
):
    # 64 images of 32x32 px through MobileNet: 8.9 MB for its largest layer's input and
    # output, about 88 MB of activations kept to train every block.
    monkeypatch.setattr(memory, "available_memory", lambda: 2_000_000)
    with pytest.raises(memory.InsufficientMemoryError) as error:
        image_classifier.run(_config(tmp_path, batch_size=64))
    message = str(error.value)
    assert message.startswith("64 images of 32x32 px through mobilenet need at least")
    assert "more than the 2.0 MB of memory available" in message
    assert re.search(
        r"lower image_size or batch_size \(a forward pass of at most \d+ images", message
    )
    assert not (tmp_path / "out").exists()

    # Enough for a forward pass but not for backpropagation through every block: a warning.
    monkeypatch.setattr(memory, "available_memory", lambda: 20_000_000)
    with caplog.at_level(logging.WARNING, logger="keras_transfer"):
        with pytest.raises(AssertionError, match="work started"):
            image_classifier.run(_config(tmp_path, batch_size=64))
    assert "training every layer of mobilenet on 64 images of 32x32 px" in caplog.text


def _keras_file_with_unknown_class(path, module=None):
    @keras.saving.register_keras_serializable(package="kt_tests")
    class Doubler(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 2

    inputs = keras.Input((4,))
    keras.Model(inputs, Doubler()(inputs)).save(path)
    keras.saving.get_custom_objects().pop("kt_tests>Doubler")
    if module:  # as if the class came from a package that is not installed
        with zipfile.ZipFile(path) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
        config = json.loads(files["config.json"])
        layer = config["config"]["layers"][1]
        layer.update(module=module, registered_name=None)
        files["config.json"] = json.dumps(config).encode()
        with zipfile.ZipFile(path, "w") as archive:
            for name, content in files.items():
                archive.writestr(name, content)


def test_unknown_class_in_a_keras_file_is_one_line_naming_it_and_the_fix(tmp_path):
    path = str(tmp_path / "custom.keras")
    _keras_file_with_unknown_class(path)
    with pytest.raises(kt.saving.UnknownSavedClassError) as error:
        kt.load_model(path)
    message = str(error.value)
    assert "\n" not in message and len(message) < 400 + len(path)
    assert message.startswith(f"{path!r} uses the class 'Doubler' (the package registered it")
    assert "'kt_tests>Doubler'" in message and "import the module that defines it" in message
    assert "Could not locate class 'Doubler'" in str(error.value.__cause__)


def test_class_of_a_missing_package_names_the_package_to_install(tmp_path):
    path = str(tmp_path / "custom.keras")
    _keras_file_with_unknown_class(path, module="keras_cv.src.layers.doubler")
    with pytest.raises(kt.saving.UnknownSavedClassError) as error:
        kt.load_model(path)
    assert str(error.value) == (
        f"{path!r} uses the class 'Doubler' of the module 'keras_cv.src.layers.doubler', "
        "which cannot be imported: pip install keras-cv, then load it again."
    )
