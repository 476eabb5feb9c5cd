"""Plumbing every floor above uses: which Keras backend runs (`backend`), file-system access
on local and remote (`gs://`) paths alike (`files`), atomic writes,
output-folder locks and finite-weights checks (`reliability`), distribution strategies and
mixed precision (`distribute`), `fit` arguments (`fit_arguments`), and whether a batch's
activations fit in memory (`memory`).
"""

from keras_transfer.utils import backend
from keras_transfer.utils import distribute
from keras_transfer.utils import files
from keras_transfer.utils import fit_arguments
from keras_transfer.utils import memory
from keras_transfer.utils import reliability
from keras_transfer.utils.distribute import STRATEGIES
from keras_transfer.utils.distribute import KerasDistribution
from keras_transfer.utils.distribute import MultiWorkerFitMixin
from keras_transfer.utils.distribute import accelerator
from keras_transfer.utils.distribute import create_strategy
from keras_transfer.utils.distribute import default_jit_compile
from keras_transfer.utils.distribute import enable_multi_worker_fit
from keras_transfer.utils.distribute import hub_load_options
from keras_transfer.utils.distribute import is_chief
from keras_transfer.utils.distribute import is_multi_worker
from keras_transfer.utils.distribute import is_tpu
from keras_transfer.utils.distribute import mixed_precision_policy
from keras_transfer.utils.distribute import model_scope
from keras_transfer.utils.distribute import model_strategy
from keras_transfer.utils.distribute import set_mixed_precision
from keras_transfer.utils.distribute import static_batches
from keras_transfer.utils.fit_arguments import no_fit_shuffle
from keras_transfer.utils.memory import ActivationMemory
from keras_transfer.utils.memory import InsufficientMemoryError
from keras_transfer.utils.memory import activation_memory
from keras_transfer.utils.memory import available_memory
from keras_transfer.utils.memory import check_activation_memory
from keras_transfer.utils.reliability import NonFiniteWeightsError
from keras_transfer.utils.reliability import check_finite_weights
from keras_transfer.utils.reliability import check_free_space
from keras_transfer.utils.reliability import copy_atomically
from keras_transfer.utils.reliability import non_finite_variables
from keras_transfer.utils.reliability import write_atomically

__all__ = [
    "backend",
    "reliability",
    "distribute",
    "files",
    "fit_arguments",
    "memory",
    "NonFiniteWeightsError",
    "check_finite_weights",
    "check_free_space",
    "copy_atomically",
    "non_finite_variables",
    "write_atomically",
    "KerasDistribution",
    "MultiWorkerFitMixin",
    "STRATEGIES",
    "model_scope",
    "model_strategy",
    "accelerator",
    "create_strategy",
    "default_jit_compile",
    "enable_multi_worker_fit",
    "hub_load_options",
    "is_chief",
    "is_multi_worker",
    "is_tpu",
    "mixed_precision_policy",
    "set_mixed_precision",
    "static_batches",
    "no_fit_shuffle",
    "ActivationMemory",
    "InsufficientMemoryError",
    "activation_memory",
    "available_memory",
    "check_activation_memory",
]
