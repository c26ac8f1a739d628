"""Datasets bundled with scikit-learn (no download): standardized features, a fixed stratified split.

scikit-learn is imported inside :func:`load`, never at ``import losslab``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Bundled datasets and their number of classes (known before loading, so that bad
#: command-line input is rejected without importing scikit-learn).
NUM_CLASSES = {"digits": 10, "breast-cancer": 2}
DATASETS = tuple(NUM_CLASSES)
NOISE_TYPES = ("symmetric", "asymmetric")


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str


def load(name: str, *, test_size: float = 0.3, split_seed: int = 0) -> Split:
    """Load a bundled dataset, split it and standardize the features.

    The split is stratified with a fixed ``split_seed`` (the same for every run, every
    objective and every training seed); features are standardized with the *training*
    mean and standard deviation (a constant feature keeps scale 1). Features are float32,
    labels int64.

    Example:
        >>> s = load("digits")
        >>> s.x_train.shape, s.x_test.shape, s.num_classes
        ((1257, 64), (540, 64), 10)
    """
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    if name == "digits":
        x, y = datasets.load_digits(return_X_y=True)
    elif name == "breast-cancer":
        x, y = datasets.load_breast_cancer(return_X_y=True)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=split_seed, stratify=y)
    mean, std = x_tr.mean(0), x_tr.std(0)
    std[std == 0] = 1.0
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    num_classes = int(y.max()) + 1
    assert num_classes == NUM_CLASSES[name], (name, num_classes)  # the table above is right
    return Split(
        x_tr.astype(np.float32), y_tr.astype(np.int64), x_te.astype(np.float32), y_te.astype(np.int64),
        num_classes, name,
    )


def max_noise(num_classes: int, noise_type: str) -> float:
    """The noise rate at which the true class stops being the most frequent observed label.

    ``symmetric``: the true label is kept with probability ``1 - noise`` and every other
    class receives ``noise / (C - 1)``, so the true class is the strict plurality iff
    ``noise < (C - 1) / C``. ``asymmetric``: the only competitor, class ``k + 1``,
    receives ``noise``, so the bound is ``1 / 2``. (For ``C = 2`` both are ``1 / 2``.)
    Rates at or above the bound make the noisy labels carry no (or inverted) information
    about the clean ones; the experiment rejects them.

    Example:
        >>> max_noise(10, "symmetric"), max_noise(10, "asymmetric"), max_noise(2, "symmetric")
        (0.9, 0.5, 0.5)
    """
    if noise_type == "symmetric":
        return (num_classes - 1) / num_classes
    if noise_type == "asymmetric":
        return 0.5
    raise ValueError(f"unknown noise type {noise_type!r}; choose one of {', '.join(NOISE_TYPES)}")


def corrupt_labels(
    y: np.ndarray, num_classes: int, noise: float, noise_type: str, rng: np.random.Generator
) -> np.ndarray:
    """Inject label noise (into training labels; the test labels stay clean).

    Each label is, independently with probability ``noise``, replaced by

    * ``symmetric``: a class drawn uniformly among the ``C - 1`` *other* classes (so the
      observed noise rate is ``noise``; the variant that may redraw the true class, used
      by some papers, has effective rate ``noise (C - 1) / C``);
    * ``asymmetric``: the next class ``(k + 1) mod C`` (class-dependent "pair flip" noise,
      as in Han et al., Co-teaching, NeurIPS 2018, and the robust-loss literature's
      CIFAR-100 protocol; for ``C = 2`` it coincides with symmetric noise).

    Deterministic for a given ``rng`` state; the draws do not depend on ``noise``'s
    type, only their use does.

    Example:
        >>> import numpy as np
        >>> y = np.arange(10).repeat(100)
        >>> y_noisy = corrupt_labels(y, 10, 0.4, "symmetric", np.random.default_rng(0))
        >>> round(float((y_noisy != y).mean()), 2), bool(((y_noisy - y) % 10 != 0).sum() == (y_noisy != y).sum())
        (0.4, True)
        >>> y_pair = corrupt_labels(y, 10, 0.4, "asymmetric", np.random.default_rng(0))
        >>> sorted(set(((y_pair - y) % 10).tolist()))
        [0, 1]
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    flip = rng.random(y.shape[0]) < noise
    shift = rng.integers(1, num_classes, size=y.shape[0]) if num_classes > 1 else np.zeros_like(y)
    if noise_type == "symmetric":
        other = (y + shift) % num_classes
    elif noise_type == "asymmetric":
        other = (y + 1) % num_classes
    else:
        raise ValueError(f"unknown noise type {noise_type!r}; choose one of {', '.join(NOISE_TYPES)}")
    return np.where(flip, other, y).astype(y.dtype)
