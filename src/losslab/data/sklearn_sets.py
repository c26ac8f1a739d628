"""Datasets bundled with scikit-learn (no download): standardized features, a fixed stratified split."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DATASETS = ("digits", "breast-cancer")


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str


def load(name: str, *, test_size: float = 0.3, split_seed: int = 0) -> Split:
    """Load a bundled dataset, split it (stratified, fixed seed) and standardize with train statistics."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    if name == "digits":
        x, y = datasets.load_digits(return_X_y=True)
    elif name == "breast-cancer":
        x, y = datasets.load_breast_cancer(return_X_y=True)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=split_seed, stratify=y)
    mean, std = x_tr.mean(0), x_tr.std(0)
    std[std == 0] = 1.0
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    return Split(
        x_tr.astype(np.float32), y_tr.astype(np.int64), x_te.astype(np.float32), y_te.astype(np.int64),
        int(y.max()) + 1, name,
    )


def corrupt_labels(
    y: np.ndarray, num_classes: int, noise: float, noise_type: str, rng: np.random.Generator
) -> np.ndarray:
    """Inject label noise.

    ``symmetric``: each label is, with probability ``noise``, replaced by a class drawn
    uniformly among the *other* classes. ``asymmetric``: each label ``k`` is, with
    probability ``noise``, replaced by ``(k + 1) mod C`` (a fixed class-dependent flip,
    as in the robust-loss literature's pair-flip noise).
    """
    flip = rng.random(y.shape[0]) < noise
    if noise_type == "symmetric":
        other = (y + rng.integers(1, num_classes, size=y.shape[0])) % num_classes
    elif noise_type == "asymmetric":
        other = (y + 1) % num_classes
    else:
        raise ValueError(f"unknown noise type {noise_type!r}")
    return np.where(flip, other, y)
