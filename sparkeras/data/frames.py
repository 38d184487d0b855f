"""One dataset, many fits: the data of a search or an ensemble, cached once in Spark.

A hyperparameter search fits dozens of models to the same rows, and an
ensemble fits several at once. Each fit packs its data
(:mod:`sparkeras.data.packing`), and a cached DataFrame's packing is kept
and shared (:mod:`sparkeras.data.reuse`). So the data is turned into cached
Spark DataFrames once, here, and every fit reads those: the rows are shipped
to the executors and packed once, not once per fit. Driver-side data
(numpy, pandas) becomes a DataFrame in the same step, so it, too, leaves the
driver once.

Only what this module cached is unpersisted at the end; a DataFrame the
user cached stays cached.
"""

from __future__ import annotations

from typing import Any

from sparkeras.data.columns import ColumnSpec
from sparkeras.data.sources import (Dataset, as_dataset, split_validation, validation_dataset,
                                    with_row_weights)


class SharedFrames:
    """Cached training (and validation) DataFrames for many fits; ``close()`` uncaches what it cached."""

    def __init__(self, spark: Any, data: Any, y: Any = None, *, validation_data: Any = None,
                 validation_split: float = 0.0, features_col: ColumnSpec = "features",
                 label_col: ColumnSpec = "label", seed: int = 0,
                 weight_col: str | None = None, sample_weight: Any = None) -> None:
        self._spark = spark
        self._cached: list[Any] = []
        dataset = with_row_weights(as_dataset(spark, data, y, features_col=features_col, label_col=label_col),
                                   weight_col, sample_weight)
        val: Dataset | None = None
        if validation_data is not None:
            val = validation_dataset(spark, validation_data, dataset)
        elif validation_split:
            dataset, val = split_validation(dataset, validation_split, seed)
        self.features_col = dataset.features_col
        self.label_col = dataset.label_col
        self.weight_col = dataset.weight_col  # the training rows' weights; validation is not weighted
        self.train = self._cache(dataset)
        self.validation = None if val is None else self._cache(val)

    @property
    def schema(self) -> Any:
        return self.train.schema

    def _cache(self, dataset: Dataset) -> Any:
        frame = dataset.spark_frame(self._spark)
        level = frame.storageLevel
        if not (level.useMemory or level.useDisk or level.useOffHeap):
            frame = frame.cache()
            self._cached.append(frame)
        return frame

    def close(self) -> None:
        """Uncache what this object cached, and drop the packings kept for it."""
        from sparkeras.data.reuse import PACKED

        for frame in self._cached:
            try:
                frame.unpersist()
            except Exception:  # noqa: BLE001 - the session may be stopped already
                pass
        self._cached = []
        PACKED.drop_uncached()

    def __enter__(self) -> "SharedFrames":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
