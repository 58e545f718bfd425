"""
Brute-force references that several test modules check the maths against: explicit Python loops over states and
samples, with no helper of numpy, scipy or torch that the implementation could share.
"""

import math

import numpy as np


def softmax_columns(values: np.ndarray, temperature: float, prior: np.ndarray | None = None) -> np.ndarray:
    """
    The E-step's tilted distribution of each column, q(j) ∝ p(j) exp(values[j] / temperature), by loops with a max-shift.

    :param values: (K, B): K samples or actions of B states
    :param temperature: η
    :param prior: (K, B) probabilities p, or None: uniform over the K samples
    :return: (K, B) the distributions q, each column summing to one
    """
    n_samples, batch_size = values.shape
    weights = np.zeros(values.shape)
    for s in range(batch_size):
        scaled = [values[j, s] / temperature for j in range(n_samples)]
        shift = max(scaled)
        exps = [(1.0 if prior is None else prior[j, s]) * math.exp(scaled[j] - shift) for j in range(n_samples)]
        total = sum(exps)
        for j in range(n_samples):
            weights[j, s] = exps[j] / total
    return weights


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) of two discrete distributions by an explicit loop (terms with p = 0 add nothing)."""
    return sum(p_i * math.log(p_i / q_i) for p_i, q_i in zip(p, q, strict=True) if p_i > 0)


def tilted_kl(values: np.ndarray, temperature: float, prior: np.ndarray | None = None) -> float:
    """
    mean over states of KL(q || p), q the tilted distribution of :func:`softmax_columns`: the E-step's constraint.

    :param values: (K, B)
    :param temperature: η
    :param prior: (K, B) probabilities p, or None: uniform over the K samples
    """
    n_samples, batch_size = values.shape
    weights = softmax_columns(values, temperature, prior)
    priors = np.full(values.shape, 1.0 / n_samples) if prior is None else prior
    return float(np.mean([kl(weights[:, s], priors[:, s]) for s in range(batch_size)]))
