"""
Exploration metrics of a set of visited states on a fixed grid (the SMM paper's measures: state coverage and the divergence
between the state marginal and the target distribution). Pure NumPy functions of a visit histogram.
"""

import numpy as np

from sb3_mpo.exploration.envs import room_of


def visit_histogram(positions: np.ndarray, bins: int = 20) -> np.ndarray:
    """
    :param positions: Visited points of the unit square, shape (n, 2)
    :param bins: Cells per axis of the grid
    :return: Visit counts per cell, shape (bins, bins), indexed [x cell, y cell]
    """
    counts, _, _ = np.histogram2d(positions[:, 0], positions[:, 1], bins=bins, range=[[0.0, 1.0], [0.0, 1.0]])
    return counts


def coverage(counts: np.ndarray) -> float:
    """Fraction of the (free) cells visited at least once."""
    return float(np.mean(counts > 0))


def state_entropy(counts: np.ndarray) -> float:
    """Entropy (nats) of the empirical state distribution over cells, H(ρ) = −Σ ρ log ρ."""
    rho = counts.ravel() / counts.sum()
    rho = rho[rho > 0]
    return float(-np.sum(rho * np.log(rho)))


def kl_to_target(counts: np.ndarray, target: np.ndarray | None = None) -> float:
    """
    KL(ρ ‖ p*) over the cells (SMM paper, Eq. (1), on the grid): Σ ρ log(ρ / p*). With a uniform target it is
    log(#cells) − H(ρ).

    :param counts: Visit counts per cell
    :param target: Target probabilities per cell (same shape, summing to 1); default uniform
    :return: The divergence in nats
    """
    rho = counts.ravel() / counts.sum()
    p_star = np.full(rho.shape, 1.0 / rho.size) if target is None else target.ravel()
    visited = rho > 0
    if np.any(p_star[visited] <= 0):
        return float("inf")
    return float(np.sum(rho[visited] * np.log(rho[visited] / p_star[visited])))


def room_fractions(positions: np.ndarray) -> np.ndarray:
    """
    :param positions: Visited points, shape (n, 2)
    :return: Fraction of the visits in each of the four rooms of PointRooms, shape (4,)
    """
    return np.bincount(room_of(positions), minlength=4) / len(positions)


def exploration_metrics(positions: np.ndarray, bins: int = 20) -> dict[str, float | list[float]]:
    """All the metrics of a set of visited points, as a JSON-ready dict."""
    counts = visit_histogram(positions, bins)
    return {
        "coverage": coverage(counts),
        "entropy": state_entropy(counts),
        "kl_to_uniform": kl_to_target(counts),
        "room_fractions": room_fractions(positions).tolist(),
        "n_states": len(positions),
    }
