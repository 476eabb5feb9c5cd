"""A simulated kill for resume tests."""

import keras


class InterruptAt(keras.callbacks.Callback):
    """Records the epochs that begin and raises `KeyboardInterrupt` (a kill, not an error
    Keras handles) at the start of epoch `at`, if given."""

    def __init__(self, at=None):
        super().__init__()
        self.at = at
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt("simulated preemption")
        self.epochs.append(epoch)
