"""The base/novel class split of the base-to-novel protocol: the single place of this rule.

Rule (CoCoOp; CoOp datasets/oxford_pets.py, subsample_classes): labels sorted, the first ceil(n/2) are
the base classes, the rest novel ("new" in the reference); the chosen classes are relabelled from 0 in
every split. It is applied after few-shot sampling, as in the reference. The reference takes the labels
present in the training split; we take all labels of the class list, which is the same set whenever
every class has training images and also works for test-only datasets.
"""

from __future__ import annotations

import math
from dataclasses import replace

from promptlab.data.errors import DatasetError
from promptlab.data.types import DatasetSplits, Datum

SUBSETS = ("all", "base", "novel")


def base_novel_labels(num_classes: int) -> tuple[list[int], list[int]]:
    """Original labels of the base and of the novel classes."""
    n_base = math.ceil(num_classes / 2)
    return list(range(n_base)), list(range(n_base, num_classes))


def subsample_classes(splits: DatasetSplits, subset: str) -> DatasetSplits:
    """Keep the `subset` ("all", "base" or "novel") classes of every split, relabelled from 0."""
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}.")
    if subset == "all":
        return splits
    base, novel = base_novel_labels(splits.num_classes)
    selected = base if subset == "base" else novel
    if not selected:
        raise DatasetError(
            f"{splits.name}: the {subset} subset is empty ({splits.num_classes} class(es); base = the "
            f"first ceil(n/2)). The base-to-novel protocol needs at least 2 classes; check the dataset's "
            f"class list or use subset 'all'."
        )
    new_label = {old: new for new, old in enumerate(selected)}

    def keep(items: list[Datum]) -> list[Datum]:
        return [replace(d, label=new_label[d.label]) for d in items if d.label in new_label]

    return replace(
        splits,
        train=keep(splits.train),
        val=keep(splits.val),
        test=keep(splits.test),
        classnames=[splits.classnames[old] for old in selected],
        notes=list(splits.notes),
    )
