"""Shared inputs of the tests of the learners fitted on cached features (LP++, ProKeR, CLAP)."""

from __future__ import annotations

import numpy as np


def gaussian_classes(seed: int = 0, classes: int = 3, dim: int = 8, shots: int = 4, n_val: int = 4, n_test: int = 5,
                     scale: float = 0.5) -> tuple:
    """Normalised Gaussian features per class (train, val, test, drawn in that order) and text embeddings near the
    class means, from numpy's legacy RandomState (stable across versions: the references ran on the same draw)."""
    rs = np.random.RandomState(seed)
    means = rs.randn(classes, dim) * scale

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([means[c] + rs.randn(n, dim) for c in range(classes)])
        return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(classes), n)

    train, val, test = draw(shots), draw(n_val), draw(n_test)
    text = means + 0.8 * rs.randn(classes, dim)
    return train, val, test, text / np.linalg.norm(text, axis=1, keepdims=True)


class Untouchable:
    """A val split that fails on any use: a validation-free fit must not read it."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the validation split was read ({name})")
