"""Dataset readers shared by the trainers, analysis/ and data/ scripts.

:mod:`.registry` is the one table of datasets (``--dataset`` names → readers, native size, normalisation) that
``Conv/common_resnet``, ``Deit`` and ``analysis/`` build their splits from: ``build_split("cifar10", root,
train=True, transform=...)``.
"""

from collections.abc import Sequence
from typing import Any

from ..errors import UserError
from .long_tail import long_tailed_counts, long_tailed_indices
from .registry import DATASETS, DatasetSpec, build_split, split_class_names, split_num_classes

__all__ = ["parse_classes", "class_names", "check_class_order", "long_tailed_counts", "long_tailed_indices",
           "DATASETS", "DatasetSpec", "build_split", "split_num_classes", "split_class_names"]


def parse_classes(text: str | None) -> list[int] | None:
    """``"0,2,4"`` → ``[0, 2, 4]`` (the ``--classes`` flag of every CLI: keep these original classes and relabel them
    0..n−1 in this order); empty or None → None (all classes)."""
    if text is None or text == "":
        return None
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--classes must be a comma-separated list of integers, got {text!r}") from None
    if not classes or len(set(classes)) != len(classes) or min(classes) < 0:
        raise UserError(f"--classes must list distinct non-negative class indices, got {text!r}")
    return classes


def check_class_order(recorded: Sequence[str] | None, current: Sequence[str] | None, source: str) -> None:
    """Refuse a checkpoint whose recorded class names (its ``classes``, index = label) are the names of this data's
    labels in another order: its logits would be scored against the wrong labels (a run on the authors' permuted zip
    maps evaluated on an ImageFolder, say). Nothing is checked where either side is unknown or the name sets differ
    (another spelling of the classes, another dataset)."""
    if recorded is None or current is None or list(recorded) == list(current):
        return
    if sorted(recorded) != sorted(current):
        return
    label = next(i for i, (a, b) in enumerate(zip(recorded, current, strict=True)) if a != b)
    raise UserError(f"{source} records its classes in another order than this data's (label {label} is "
                    f"{recorded[label]!r} there, {current[label]!r} here), so its logits would be scored against the "
                    f"wrong labels; use the data (or zip maps) it was trained on, or convert it with `python -m "
                    f"maxsup.hub convert`, which sorts a head of wnids by name")


def class_names(dataset: Any, nb_classes: int) -> list[str] | None:
    """The name of each label 0..nb_classes−1 of a dataset (index = label), as every trainer's checkpoint records them
    under ``classes``: ImageFolder's class folders (sorted), a zip cache's train-map folders (in the map's label
    order, e.g. the authors' permuted wnids), Fashion-MNIST's class names (after ``--classes``); None where they
    are unknown or do not cover the ``nb_classes`` labels (a zip map that does not name its classes, synthetic data)."""
    names = getattr(dataset, "classes", None)
    if names is None or len(names) != nb_classes:
        return None
    return [str(n) for n in names]
