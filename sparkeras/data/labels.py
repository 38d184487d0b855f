"""Text class labels (``"setosa"``, ``"spam"``) as the class ids a Keras classifier trains on.

Why. A CSV or Parquet table from a data engineer names its classes in a
string column far more often than it numbers them. In Python the answer is
Spark ML's ``StringIndexer``, and the library's error says so; a user of
the command line has no such step, so ``sparkeras train --label species``
could not train on the table at all. Here the classes are the column's
distinct values in sorted order (as ``read_images`` orders class folders),
the mapping is Spark ML's own ``StringIndexerModel``, and the names travel in
the label column's metadata, where :func:`sparkeras.model.label_classes`
finds them and the saved model keeps them for ``evaluate`` and ``predict``.
"""

from __future__ import annotations

from typing import Any, Sequence

from sparkeras.data.columns import quoted
from sparkeras.errors import InputError

MAX_CLASSES = 10_000
"""More distinct values than this and the column is not a class label (an id or free text, say)."""


def is_text_column(frame: Any, column: str) -> bool:
    """Whether ``frame`` has ``column`` and it holds strings."""
    from pyspark.sql.types import StringType

    return column in frame.columns and isinstance(frame.schema[column].dataType, StringType)


def text_classes(frame: Any, column: str, what: str = "--data") -> list[str]:
    """The distinct values of the string column ``column``, sorted: one Spark job over that column.

    Refuses a column with empty (null) labels, or with more than
    :data:`MAX_CLASSES` values, naming the column and what to do.
    """
    values = _distinct(frame, column, what)
    if len(values) > MAX_CLASSES:
        raise InputError(f"Label column {column!r} of {what} holds more than {MAX_CLASSES} distinct text values, "
                         "so it is not a class label; name the column of class names as the label.")
    if len(values) < 2:
        raise InputError(f"Label column {column!r} of {what} holds a single class {values}; a classifier needs at "
                         "least two.")
    return sorted(values)


def with_class_ids(frame: Any, column: str, classes: Sequence[str], what: str = "--data") -> Any:
    """``frame`` with its string column ``column`` replaced by each row's index in ``classes``.

    Every value must be one of ``classes`` (checked here, by one Spark job
    over that column, so that an unseen class is named before any work
    starts rather than failing a task). The column keeps its name and
    place, and carries ``classes`` as Spark ML's nominal attribute values.
    """
    from pyspark.ml.feature import StringIndexerModel
    from pyspark.sql import functions as F

    known = set(classes)
    unseen = sorted(str(v) for v in _distinct(frame, column, what) if v not in known)
    if unseen:
        raise InputError(f"Label column {column!r} of {what} holds {unseen[:10]}, which the model's classes "
                         f"{list(classes)[:10]} do not include; a model predicts only the classes it was "
                         "trained on.")
    staging = f"{column}__sparkeras_class_id"
    while staging in frame.columns:
        staging += "_"
    indexer = StringIndexerModel.from_labels(list(classes), inputCol=column, outputCol=staging,
                                             handleInvalid="error")
    indexed = indexer.transform(frame)
    return indexed.select(*[F.col(quoted(staging)).alias(column, metadata=indexed.schema[staging].metadata)
                            if name == column else F.col(quoted(name)) for name in frame.columns])


def _distinct(frame: Any, column: str, what: str) -> list[str]:
    """Up to :data:`MAX_CLASSES` + 1 distinct values of ``column`` (enough to tell a class label from an id);
    a null among them is refused."""
    from pyspark.sql import functions as F

    values = [row[0] for row in frame.select(F.col(quoted(column))).distinct().limit(MAX_CLASSES + 1).collect()]
    if any(v is None for v in values):
        raise InputError(f"Label column {column!r} of {what} has rows without a label (null); drop or fill them "
                         "first.")
    return values
