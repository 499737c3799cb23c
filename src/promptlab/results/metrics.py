"""The two formulas every promptlab number goes through: top-1 accuracy in percent and the harmonic mean.

This is the single place of the base-to-novel harmonic mean (CoCoOp, Zhou et al. CVPR 2022, Sec. 4.1):
training code, tables and plots all call `harmonic_mean` instead of re-deriving it.
"""

from __future__ import annotations


def harmonic_mean(base: float, novel: float) -> float:
    """Harmonic mean 2ab / (a + b) of base and novel accuracy (any unit, typically percent).

    Returns 0.0 when both are 0 (the limit of the formula; a model that is wrong everywhere has HM 0).
    """
    if base < 0 or novel < 0:
        raise ValueError(
            f"harmonic_mean expects non-negative accuracies, got base={base!r}, novel={novel!r}; "
            "pass accuracies in [0, 100] (percent) or [0, 1]."
        )
    if base + novel == 0:
        return 0.0
    return 2.0 * base * novel / (base + novel)


def accuracy_percent(n_correct: int, n_images: int) -> float:
    """Micro top-1 accuracy in percent (every image counts once, as in the CoOp/Dassl evaluator)."""
    if n_images <= 0:
        raise ValueError(
            f"accuracy_percent needs at least one image, got n_images={n_images!r}; "
            "check that the evaluation split is not empty."
        )
    if not 0 <= n_correct <= n_images:
        raise ValueError(
            f"n_correct={n_correct!r} must lie in [0, n_images={n_images!r}]; "
            "each image may be counted as correct at most once."
        )
    return 100.0 * n_correct / n_images
