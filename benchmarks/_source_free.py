"""The source-free arms of `domain_adaptation.py`: AdaBN, TENT and SHOT adapt, without the
source images, the source-only model that source validation chose (a label-free start).

Each arm scores checkpoints on the target validation split: the source model itself
(checkpoint 0) and the adapted model after each epoch (AdaBN: checkpoint 1, adapted). Two
selections are reported, and the test split is read once per selection:

- `declared`: the command's declared defaults (`keras_transfer.apps.adapt.METHOD_DEFAULTS`:
  AdaBN adapted, TENT 1 epoch at Adam 1e-3, SHOT 5 epochs at Adam 1e-4), the label-free
  selection a user without target labels gets;
- `chosen_by_target_val`: the checkpoint with the best target validation accuracy (ties:
  the earlier), what target labels would have chosen (checkpoint 0 included: "do not
  adapt" is a choice).

AdaBN and TENT adapt BatchNormalization, which digits_m's network does not have.
"""

from __future__ import annotations

import time

import keras
import tensorflow as tf

import keras_transfer as kt
from keras_transfer.apps import adapt as adapt_lib

SOURCE_FREE = ("adabn", "tent", "shot")
NEEDS_BATCHNORM = ("adabn", "tent")
# Checkpoints scored per arm: epochs 1..N (AdaBN: the one adapted model).
CHECKPOINTS = {"adabn": 1, "tent": 3, "shot": 5}


class _Checkpoints(keras.callbacks.Callback):
    """After each epoch: the classifier's target validation accuracy and weights."""

    def __init__(self, classifier, score):
        super().__init__()
        self.classifier, self.score = classifier, score
        self.scores, self.weights = {}, {}

    def on_epoch_end(self, epoch, logs=None):
        self.scores[epoch + 1] = self.score(self.classifier)
        self.weights[epoch + 1] = self.classifier.get_weights()


def _adapt(method, model, target, unfreeze, callback):
    declared = adapt_lib.METHOD_DEFAULTS[method]
    if method == "adabn":
        kt.adapt_batchnorm(model, target)
        callback.on_epoch_end(0)
    elif method == "tent":
        kt.fit_tent(
            model,
            target,
            epochs=CHECKPOINTS[method],
            learning_rate=declared["learning_rate"],
            callbacks=[callback],
            verbose=0,
        )
    else:
        kt.fit_shot(
            model,
            target,
            epochs=CHECKPOINTS[method],
            learning_rate=declared["learning_rate"],
            unfreeze=unfreeze,
            callbacks=[callback],
            verbose=0,
        )


def run_source_free(method, model, data, batch_size, unfreeze, accuracy) -> dict:
    """Adapts `model` (the source model, changed in place) with `method`; the record of
    both selections (module docstring) and the target validation curve."""
    start = time.perf_counter()

    def score(classifier):
        return accuracy(classifier, *data["target_validation"])

    # In a fixed order: SHOT matches its pseudo-labels to the images by position.
    target = tf.data.Dataset.from_tensor_slices(data["target_train"][0]).batch(batch_size)
    callback = _Checkpoints(model, score)
    callback.scores[0], callback.weights[0] = score(model), model.get_weights()
    _adapt(method, model, target, unfreeze, callback)
    declared = 1 if method == "adabn" else adapt_lib.METHOD_DEFAULTS[method]["epochs"]
    best = max(callback.scores, key=lambda epoch: (callback.scores[epoch], -epoch))
    record = {"curve": [[e, callback.scores[e]] for e in sorted(callback.scores)]}
    for name, epoch in (("declared", declared), ("chosen_by_target_val", best)):
        model.set_weights(callback.weights[epoch])
        record[name] = {
            "epoch": epoch,
            "acc": callback.scores[epoch],
            "test_acc": accuracy(model, *data["test"]),
        }
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record
