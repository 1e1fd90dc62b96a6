"""Continual-learning metrics over an accuracy matrix R, where R[i][j] is the accuracy on task j after
learning tasks 0..i (None where it was not measured).

Definitions follow Lopez-Paz & Ranzato (2017, GEM) for average accuracy, backward and forward transfer,
and Chaudhry et al. (2018, RWalk) for forgetting. With T tasks:

- average accuracy   AA  = mean_j R[T-1][j]
- backward transfer  BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])
- forward transfer   FWT = mean_{j>0} (R[j-1][j] - b[j]), b[j] the accuracy on task j before any training
- forgetting         F   = mean_{j<T-1} max_{l<T-1} (R[l][j] - R[T-1][j]), over the stages l >= j that saw j

BWT, FWT and forgetting are None with a single task (there is nothing to transfer or forget).
"""

from __future__ import annotations

from typing import Sequence

Matrix = Sequence[Sequence[float | None]]


def _check(matrix: Matrix) -> int:
    size = len(matrix)
    if size == 0 or any(len(row) != size for row in matrix):
        raise ValueError("the accuracy matrix must be square and non-empty")
    for i in range(size):
        for j in range(i + 1):
            if matrix[i][j] is None:
                raise ValueError(f"R[{i}][{j}] is missing: every task seen so far must be measured at every stage")
    return size


def average_accuracy(matrix: Matrix) -> float:
    size = _check(matrix)
    return sum(matrix[-1][j] for j in range(size)) / size  # type: ignore[misc]


def backward_transfer(matrix: Matrix) -> float | None:
    size = _check(matrix)
    if size < 2:
        return None
    return sum(matrix[-1][j] - matrix[j][j] for j in range(size - 1)) / (size - 1)  # type: ignore[operator]


def forward_transfer(matrix: Matrix, before_training: Sequence[float]) -> float | None:
    """`before_training[j]`: the score on task j with no training at all (the baseline b of GEM)."""
    size = _check(matrix)
    if len(before_training) != size:
        raise ValueError(f"need one zero-training score per task ({size}), got {len(before_training)}")
    if size < 2:
        return None
    gaps = []
    for j in range(1, size):
        if matrix[j - 1][j] is None:
            raise ValueError(f"R[{j - 1}][{j}] is missing: forward transfer needs each task measured one stage early")
        gaps.append(matrix[j - 1][j] - before_training[j])  # type: ignore[operator]
    return sum(gaps) / len(gaps)


def forgetting(matrix: Matrix) -> float | None:
    size = _check(matrix)
    if size < 2:
        return None
    drops = [max(matrix[stage][j] for stage in range(j, size - 1)) - matrix[-1][j] for j in range(size - 1)]  # type: ignore[type-var]
    return sum(drops) / len(drops)  # type: ignore[arg-type]


def summary(matrix: Matrix, before_training: Sequence[float] | None = None) -> dict[str, float | None]:
    """AA, BWT, forgetting, and FWT when zero-training scores are given."""
    return {"average_accuracy": average_accuracy(matrix), "bwt": backward_transfer(matrix),
            "fwt": forward_transfer(matrix, before_training) if before_training is not None else None,
            "forgetting": forgetting(matrix)}
