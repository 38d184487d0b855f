"""Whether each worker's share of the training rows holds the same mix of labels.

Why. Keras' ``fit`` shuffles the whole training set every epoch, so every
batch is a sample of all the labels. The workers of a distributed fit each
train on their own share of the rows, and the shares are the data's
partitions as they come: a DataFrame sorted or written by label
(``orderBy("label")``, ``partitionBy("label")``, one folder of images per
class), or numpy classes stacked one after another, gives each worker a few
of the classes. Models averaged from workers that saw different classes are
worse than either: a 10-class MLP sorted by label into 2 partitions lost 4.7
accuracy points with ``averaging`` and 15 with ``adag`` against the same data
shuffled, after 3 epochs.

The packing pass already reads every label, so each partition's label mix
is counted there at no extra pass (class counts for class ids; per-value
sums and sums of squares otherwise), and the shares are dealt again only
when they differ: beyond chance (a chi-square test of homogeneity, or a
one-way analysis of variance, far past its mean) and by more than a small
effect size (Cramér's V, or the square root of eta squared, above
:data:`SKEWED`). Random shares of any real size stay well below both.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

SKEWED = 0.1  # effect size from which shares count as holding different labels (0: same mix; 1: disjoint)
MAX_CLASSES = 4096  # class ids counted per partition; more are left uncounted (never dealt again)
MAX_VALUES = 256  # label values per row whose sums are kept (one-hot rows, targets)


def label_moments(slot: str, classes: int | None, raw: np.ndarray | None) -> dict[str, Any]:
    """Executor side: one block's label counts (class ids) or per-value sums and sums of squares.

    They add up across blocks and partitions, as the other packing
    statistics do. Non-finite labels are left out: the fit refuses them.
    """
    if raw is None or raw.size == 0:
        return {}
    if classes is not None:
        if classes > MAX_CLASSES:
            return {}
        ids = raw.reshape(-1)
        ids = ids[np.isfinite(ids) & (ids >= 0) & (ids < classes)] if ids.dtype.kind == "f" \
            else ids[(ids >= 0) & (ids < classes)]
        return {f"{slot}_classes": np.bincount(ids.astype(np.int64), minlength=classes)}
    rows = raw.reshape(len(raw), -1).astype(np.float64, copy=False)
    if rows.shape[1] > MAX_VALUES:
        return {}
    rows = rows[np.isfinite(rows).all(axis=1)]
    return {f"{slot}_n": len(rows), f"{slot}_sum": rows.sum(axis=0), f"{slot}_sqsum": np.square(rows).sum(axis=0)}


def label_skew(per_partition: Sequence[dict[str, Any]], slots: Sequence[str]) -> float:
    """The largest effect size by which the partitions' labels differ beyond chance; 0 when they do not.

    ``per_partition`` holds each partition's merged packing statistics,
    ``slots`` the label bindings' slots.
    """
    worst = 0.0
    for slot in slots:  # a partition without the figures holds no rows (or too many classes to count)
        counts = [p[f"{slot}_classes"] for p in per_partition if p.get(f"{slot}_classes") is not None]
        if len(counts) > 1:
            worst = max(worst, class_skew(np.stack(counts)))
        parts = [p for p in per_partition if p.get(f"{slot}_sum") is not None]
        if len(parts) > 1:
            worst = max(worst, value_skew(np.array([p[f"{slot}_n"] for p in parts], dtype=np.float64),
                                          np.stack([p[f"{slot}_sum"] for p in parts]),
                                          np.stack([p[f"{slot}_sqsum"] for p in parts])))
    return worst


def class_skew(counts: np.ndarray) -> float:
    """Cramér's V of a partitions x classes count table, when its chi-square is far beyond chance; else 0."""
    counts = counts[counts.sum(axis=1) > 0][:, counts.sum(axis=0) > 0].astype(np.float64)
    partitions, classes = counts.shape
    if partitions < 2 or classes < 2:
        return 0.0
    total = counts.sum()
    expected = np.outer(counts.sum(axis=1), counts.sum(axis=0)) / total
    chi2 = float((np.square(counts - expected) / expected).sum())
    dof = (partitions - 1) * (classes - 1)
    if not _beyond_chance(chi2, dof):
        return 0.0
    return math.sqrt(chi2 / (total * min(partitions - 1, classes - 1)))


def value_skew(rows: np.ndarray, sums: np.ndarray, sqsums: np.ndarray) -> float:
    """The largest square root of eta squared (the share of a label value's variance the partition explains).

    Only values whose between-partition variation is far beyond chance
    count; ``rows`` is per partition, ``sums`` and ``sqsums`` partitions x values.
    """
    keep = rows > 0
    rows, sums, sqsums = rows[keep], sums[keep], sqsums[keep]
    partitions, total = len(rows), float(rows.sum())
    if partitions < 2 or total <= partitions:
        return 0.0
    mean = sums.sum(axis=0) / total
    spread = sqsums.sum(axis=0) - total * np.square(mean)
    between = (rows[:, None] * np.square(sums / rows[:, None] - mean)).sum(axis=0)
    worst = 0.0
    for b, t in zip(between, spread):
        if t <= 1e-12 * max(1.0, total):
            continue
        eta2 = min(1.0, float(b / t))
        if _beyond_chance((total - 1) * eta2, partitions - 1):
            worst = max(worst, math.sqrt(eta2))
    return worst


def _beyond_chance(statistic: float, dof: int) -> bool:
    """A chi-square statistic more than five standard deviations above its mean under random shares."""
    return statistic > dof + 5 * math.sqrt(2 * dof)
