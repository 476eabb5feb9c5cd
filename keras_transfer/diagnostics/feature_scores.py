"""Transferability scores on feature arrays: LogME, LEEP and H-score.

Each takes the `(examples, dims)` features (or, for LEEP, the source classifier's
probabilities) of labelled target data and its labels, and needs no training; see
`transfer_scores` for the references and for scoring a backbone's blocks on images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MIN_EXAMPLES_PER_CLASS",
    "class_indices",
    "h_score",
    "leep",
    "logme",
]

DEFAULT_MIN_EXAMPLES_PER_CLASS = 2


def class_indices(
    labels: Any, min_examples_per_class: int = DEFAULT_MIN_EXAMPLES_PER_CLASS
) -> tuple[np.ndarray, int]:
    """Labels as consecutive class indices 0..C-1, after checking there are enough."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)  # one-hot
    labels = labels.reshape(len(labels), -1)
    if labels.shape[1] != 1:
        raise ValueError(
            f"Labels must be class indices (N,) or one-hot (N, C), got shape {labels.shape}."
        )
    labels = labels[:, 0]
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(labels == np.round(labels)):
            raise ValueError(
                "Transferability scores rank classification data: the labels must be "
                "class indices or one-hot rows, got non-integer values."
            )
    classes, indices, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise ValueError(
            f"Transferability needs at least two classes, got {len(classes)} "
            f"({classes.tolist()}): every score measures how well the features separate "
            "classes. Pass data with examples of two or more classes."
        )
    too_few = {c.item(): int(n) for c, n in zip(classes, counts) if n < min_examples_per_class}
    if too_few:
        raise ValueError(
            f"Too few examples per class for a transferability score: {too_few} (class: "
            f"count), at least {min_examples_per_class} needed per class. Add labelled "
            "examples of these classes, drop them, or lower min_examples_per_class."
        )
    return indices.astype(np.int64), len(classes)


def _features_2d(features: Any) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(
            f"Features must be a 2-D (examples, dims) array, got shape {features.shape}: pool "
            "feature maps first (transferability() does)."
        )
    if not np.all(np.isfinite(features)):
        raise ValueError("The features contain NaN or infinite values.")
    return features


def _thin_svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`x = U diag(sqrt(s2)) V'` over its numerically non-zero singular values.

    Through the eigendecomposition of the smaller Gram matrix (N x N or D x D), as the
    reference LogME code does: much cheaper than an SVD of `x` when N and D differ.
    """
    n, d = x.shape
    s2, vectors = np.linalg.eigh(x @ x.T if n <= d else x.T @ x)
    keep = s2 > max(s2.max(), 0.0) * max(n, d) * np.finfo(np.float64).eps
    s2, vectors = s2[keep], vectors[:, keep]
    if n <= d:
        return vectors, s2, x.T @ vectors / np.sqrt(s2)
    return x @ vectors / np.sqrt(s2), s2, vectors


def _log_evidence(alpha, beta, sigma, x2, outside, n, d) -> float:
    """log p(y | F, alpha, beta) at the posterior mean m, in the SVD basis of F."""
    ratio = alpha / beta
    m2 = float((sigma * x2 / (sigma + ratio) ** 2).sum())
    residual = float((x2 * (ratio / (sigma + ratio)) ** 2).sum()) + outside
    # log|A| for A = alpha I + beta F'F: the D - k directions outside F's row space have
    # eigenvalue alpha.
    log_det = float(np.log(alpha + beta * sigma).sum()) + (d - sigma.size) * np.log(alpha)
    return float(
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - log_det / 2
        - beta / 2 * residual
        - alpha / 2 * m2
        - n / 2 * np.log(2 * np.pi)
    )


def logme(
    features: Any,
    labels: Any,
    *,
    max_iterations: int = 100,
    tolerance: float = 1e-5,
    min_examples_per_class: int = DEFAULT_MIN_EXAMPLES_PER_CLASS,
) -> float:
    """LogME (You et al., ICML 2021) of `features` for the class `labels`.

    For each class c, a Bayesian linear model `y_c = F w + noise` with prior
    `w ~ N(0, 1/alpha)` and noise `N(0, 1/beta)`; alpha and beta maximise the marginal
    evidence p(y_c | F) by the fixed-point iteration gamma = sum(beta s_i / (alpha +
    beta s_i)), alpha = gamma / m'm, beta = (N - gamma) / |y_c - F m|^2. The score is the
    mean over classes of the maximised log evidence divided by N.

    Args:
        features: `(N, D)` array.
        labels: `(N,)` class indices (any integers) or `(N, C)` one-hot rows.
        max_iterations, tolerance: the fixed-point iteration stops when alpha/beta changes
            by less than `tolerance` (relative).
        min_examples_per_class: fewer examples in any class is an error.

    Returns:
        The LogME score (higher: the features fit the labels with a simpler linear model).
    """
    f = _features_2d(features)
    y, num_classes = class_indices(labels, min_examples_per_class)
    n, d = f.shape
    # F = U S V': the evidence only needs the projections of y on U and the squared
    # singular values, so each class costs O(N k) after one decomposition.
    u, sigma, _ = _thin_svd(f)
    evidences = []
    for c in range(num_classes):
        target = (y == c).astype(np.float64)
        x = u.T @ target
        x2 = x**2
        # The part of y outside the span of F: fitted by no weight vector.
        outside = max(float(target @ target - x2.sum()), 0.0)
        alpha, beta = 1.0, 1.0
        evidence = -np.inf
        for _ in range(max_iterations):
            ratio = alpha / beta
            gamma = float((sigma / (sigma + ratio)).sum())
            m2 = float((sigma * x2 / (sigma + ratio) ** 2).sum())
            residual = float((x2 * (ratio / (sigma + ratio)) ** 2).sum()) + outside
            alpha = gamma / max(m2, 1e-300)
            beta = max(n - gamma, 1e-12) / max(residual, 1e-300)
            previous, evidence = evidence, _log_evidence(alpha, beta, sigma, x2, outside, n, d)
            # With N <= D the features can fit y exactly: beta grows without bound while the
            # evidence converges, so the evidence decides convergence too.
            if abs(alpha / beta - ratio) <= tolerance * ratio or abs(
                evidence - previous
            ) <= tolerance * max(1.0, abs(evidence)):
                break
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def leep(
    source_probabilities: Any,
    labels: Any,
    *,
    min_examples_per_class: int = DEFAULT_MIN_EXAMPLES_PER_CLASS,
) -> float:
    """LEEP (Nguyen et al., ICML 2020) from the source classifier's predictions.

    With theta(x) the source model's predicted distribution over its Z classes, the
    empirical joint is P(y, z) = mean_i theta(x_i)_z [y_i = y], the conditional
    P(y | z) = P(y, z) / P(z), and LEEP = mean_i log sum_z P(y_i | z) theta(x_i)_z.

    Args:
        source_probabilities: `(N, Z)` probabilities of the source classes (rows sum to 1).
        labels: `(N,)` target class indices or `(N, C)` one-hot rows.
        min_examples_per_class: fewer examples in any class is an error.

    Returns:
        The LEEP score, <= 0 (0: the source predictions determine the target labels).
    """
    theta = _features_2d(source_probabilities)
    if np.any(theta < 0) or not np.allclose(theta.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError(
            "LEEP needs the source classifier's probabilities (non-negative rows summing to "
            "1), got rows summing to "
            f"{theta.sum(axis=1).min():.3g}..{theta.sum(axis=1).max():.3g}: apply the "
            "softmax of the source head."
        )
    y, num_classes = class_indices(labels, min_examples_per_class)
    n = len(y)
    joint = np.zeros((num_classes, theta.shape[1]))
    np.add.at(joint, y, theta / n)
    # A source class no example predicts has P(z) = 0; it also has theta_z = 0 everywhere.
    marginal = joint.sum(axis=0, keepdims=True)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    likelihood = np.einsum("nz,nz->n", theta, conditional[y])
    return float(np.mean(np.log(np.maximum(likelihood, 1e-300))))


def _ledoit_wolf_amount(centered: np.ndarray, gram_frobenius2: float) -> float:
    # Ledoit & Wolf (2004), "A well-conditioned estimator for large-dimensional covariance
    # matrices": the estimated optimal amount of shrinkage of the sample covariance S
    # towards mu I, from O(N D) sums (|S|_F^2 is given: that of the smaller Gram matrix).
    n, d = centered.shape
    row_norms2 = (centered**2).sum(axis=1)
    trace = row_norms2.sum() / n
    mu = trace / d
    sample_frobenius2 = gram_frobenius2 / n**2
    delta = (sample_frobenius2 - 2 * mu * trace + d * mu**2) / d
    beta = ((row_norms2**2).sum() / n - sample_frobenius2) / (d * n)
    return 0.0 if delta <= 0 else float(min(max(beta, 0.0), delta) / delta)


def h_score(
    features: Any,
    labels: Any,
    *,
    shrinkage: float | str | None = None,
    min_examples_per_class: int = DEFAULT_MIN_EXAMPLES_PER_CLASS,
) -> float:
    """H-score (Bao et al., ICIP 2019): tr(cov(f)^-1 cov(E[f | y])).

    Args:
        features: `(N, D)` array.
        labels: `(N,)` class indices or `(N, C)` one-hot rows.
        shrinkage: `None` for the sample covariance (its pseudo-inverse when singular, as
            in the paper), a number in [0, 1] to shrink it towards a multiple of the
            identity by that amount, or `"auto"` for the Ledoit-Wolf amount (the
            regularised H-score; use it when N is not much larger than D).
        min_examples_per_class: fewer examples in any class is an error.

    Returns:
        The H-score, in [0, C - 1] for C classes.
    """
    f = _features_2d(features)
    y, num_classes = class_indices(labels, min_examples_per_class)
    n, d = f.shape
    centered = f - f.mean(axis=0)
    _, s2, v = _thin_svd(centered)
    if shrinkage == "auto":
        shrinkage = _ledoit_wolf_amount(centered, float((s2**2).sum()))
    elif shrinkage is None:
        shrinkage = 0.0
    elif not isinstance(shrinkage, int | float) or isinstance(shrinkage, bool):
        raise ValueError(
            f"shrinkage must be None, a number in [0, 1] or 'auto', got {shrinkage!r}."
        )
    elif not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}.")
    class_means = np.zeros((num_classes, d))
    np.add.at(class_means, y, centered)
    class_means /= np.bincount(y, minlength=num_classes)[:, None]
    conditional = class_means[y]  # E[f | y_i] for each example, centred
    # The shrunk covariance (1 - a) S + a mu I has eigenvalues (1 - a) s2 / N + a mu on the
    # row space of the centred features (where every class mean lies) and a mu elsewhere,
    # so the trace only needs the projections of the class means on V (the pseudo-inverse
    # for a = 0, as in the paper). The between-class covariance is shrunk by the same
    # (1 - a) (Ibrahim et al.), which keeps the score in [0, C - 1].
    mu = s2.sum() / n / d
    projected2 = ((conditional @ v) ** 2).sum(axis=0) / n
    eigenvalues = (1 - shrinkage) * s2 / n + shrinkage * mu
    return float((1 - shrinkage) * (projected2 / eigenvalues).sum())
