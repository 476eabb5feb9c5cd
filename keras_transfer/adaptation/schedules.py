"""The schedules of domain-adversarial training (Ganin et al. 2016, "Domain-Adversarial
Training of Neural Networks", JMLR 17): the reversal weight lambda_p = 2 / (1 + exp(-10 p)) - 1
(`reversal_weight`) and the learning-rate annealing mu_p = mu_0 / (1 + 10 p)^0.75
(`DannLearningRate`), over the training progress p in [0, 1].
"""

from __future__ import annotations

import keras

__all__ = ["DannLearningRate", "reversal_weight"]


def reversal_weight(progress):
    """Ganin et al. 2016's schedule of the adaptation weight: 2 / (1 + exp(-10 p)) - 1.

    0 at the start of training (the domain classifier's gradients are noise while it is
    untrained) and close to 1 from about a third of the way on. `progress` is a float or
    tensor in [0, 1].
    """
    return 2.0 / (1.0 + keras.ops.exp(-10.0 * progress)) - 1.0


@keras.saving.register_keras_serializable(package="keras_transfer")
class DannLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """The learning-rate annealing of Ganin et al. 2016: mu_p = mu_0 / (1 + alpha p)^beta.

    `p = step / total_steps` is the training progress, clipped to [0, 1]; the paper uses
    `alpha=10`, `beta=0.75` (with SGD, momentum 0.9 and mu_0 = 0.01).

    Args:
        initial_learning_rate: mu_0.
        total_steps: the number of optimizer steps of the whole training run.
        alpha, beta: the schedule's constants.

    Example:
    ```python
    optimizer = keras.optimizers.SGD(DannLearningRate(0.01, total_steps=10_000), momentum=0.9)
    ```
    """

    def __init__(
        self,
        initial_learning_rate: float,
        total_steps: int,
        alpha: float = 10.0,
        beta: float = 0.75,
    ):
        if not initial_learning_rate > 0:
            raise ValueError(f"initial_learning_rate must be > 0, got {initial_learning_rate}.")
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps}.")
        self.initial_learning_rate = float(initial_learning_rate)
        self.total_steps = int(total_steps)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def __call__(self, step):
        progress = keras.ops.clip(
            keras.ops.cast(step, "float32") / float(self.total_steps), 0.0, 1.0
        )
        return self.initial_learning_rate / (1.0 + self.alpha * progress) ** self.beta

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "total_steps": self.total_steps,
            "alpha": self.alpha,
            "beta": self.beta,
        }
