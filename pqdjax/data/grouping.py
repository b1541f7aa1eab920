"""Grouping samples by class, and padding classes to a common size."""

from __future__ import annotations

import numpy as np
from pqdjax.errors import InputError


class EmptyClassError(InputError):
    """A class has no samples, so it cannot be distilled."""


def class_indices(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Indices of each class's samples, in dataset order.

    Args:
      labels: int [N] in [0, num_classes).
    Returns:
      num_classes int64 arrays of indices into `labels`.
    Raises:
      EmptyClassError: some class has no sample.
      ValueError: a label is outside [0, num_classes).
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(
            f"labels must lie in [0, {num_classes}); found {labels.min()}..{labels.max()}."
        )
    groups = [np.flatnonzero(labels == c) for c in range(num_classes)]
    empty = [c for c, g in enumerate(groups) if g.size == 0]
    if empty:
        raise EmptyClassError(
            f"class(es) {empty} have no training samples; every class needs at least IPC samples. "
            "Check the dataset's labels or config.data.train_per_class."
        )
    return groups


def stack_padded(per_class: list[np.ndarray], n_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stacks per-class arrays [n_c, ...] into one [C, n_max, ...] array padded with zeros (n_max: default the
    largest n_c; a larger one pads a part of the classes as all of them would be).

    Returns:
      padded: [C, n_max, ...], class c's rows first, then zeros.
      mass: float32 [C, n_max], 1/n_c on class c's rows and 0 on padding,
        so each class's empirical measure is (padded[c], mass[c]).
    """
    n_max = max(len(rows) for rows in per_class) if n_max is None else n_max
    padded = np.zeros((len(per_class), n_max) + per_class[0].shape[1:], per_class[0].dtype)
    mass = np.zeros((len(per_class), n_max), np.float32)
    for c, rows in enumerate(per_class):
        padded[c, : len(rows)] = rows
        mass[c, : len(rows)] = 1.0 / len(rows)
    return padded, mass
