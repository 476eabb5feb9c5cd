"""Every Keras callback of the package: gradual unfreezing (`unfreezing`), BatchNormalization
recalibration (`batchnorm`), early stopping on the validated weights (`early_stopping`),
divergence and empty-epoch guards (`guards`), atomic training backups, LoRA's included
(`backup`), and TensorBoard logs on one step axis across `fit` calls (`tensorboard`).

The run's own record of epochs, `EpochRecorder`, stays with the run in
`keras_transfer.training.two_phase_state`.
"""

from keras_transfer.training.callbacks import backup
from keras_transfer.training.callbacks import batchnorm
from keras_transfer.training.callbacks import early_stopping
from keras_transfer.training.callbacks import guards
from keras_transfer.training.callbacks import tensorboard
from keras_transfer.training.callbacks import unfreezing
from keras_transfer.training.callbacks.backup import AtomicBackupAndRestore
from keras_transfer.training.callbacks.backup import BackupUnreadableError
from keras_transfer.training.callbacks.backup import LoraBackupAndRestore
from keras_transfer.training.callbacks.batchnorm import BatchNormRecalibration
from keras_transfer.training.callbacks.batchnorm import recalibrate_batchnorm
from keras_transfer.training.callbacks.early_stopping import ValidatedEarlyStopping
from keras_transfer.training.callbacks.guards import EmptyEpochGuard
from keras_transfer.training.callbacks.guards import NonFiniteGuard
from keras_transfer.training.callbacks.guards import NonFiniteLossError
from keras_transfer.training.callbacks.tensorboard import RunTensorBoard
from keras_transfer.training.callbacks.unfreezing import GradualUnfreezing
from keras_transfer.training.callbacks.unfreezing import ScheduleValue
from keras_transfer.training.callbacks.unfreezing import ensure_optimizer_variables
from keras_transfer.training.callbacks.unfreezing import parse_unfreeze_schedule

__all__ = [
    "unfreezing",
    "batchnorm",
    "early_stopping",
    "guards",
    "backup",
    "tensorboard",
    "GradualUnfreezing",
    "ScheduleValue",
    "ensure_optimizer_variables",
    "parse_unfreeze_schedule",
    "BatchNormRecalibration",
    "recalibrate_batchnorm",
    "ValidatedEarlyStopping",
    "EmptyEpochGuard",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "AtomicBackupAndRestore",
    "BackupUnreadableError",
    "LoraBackupAndRestore",
    "RunTensorBoard",
]
