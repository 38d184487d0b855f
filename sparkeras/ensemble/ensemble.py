"""Ensembles: K Keras models trained at once as Spark tasks, combined into one Keras model.

As dist-keras' ``EnsembleTrainer`` did, members differ by their initial
weights (one seed each) and by their data: a disjoint share of the rows
each (``"partition"``) or a bootstrap sample the size of the data
(``"bootstrap"``, bagging). Each member is a one-worker fit, so it trains
exactly as ``model.fit`` would, and as many members train at once as the
cluster has task slots.

The trained members are then joined into a single Keras model that feeds
its input to every member and combines their outputs: the mean
(probabilities or regression outputs) or a majority vote
(:class:`~sparkeras.ensemble.layers.MajorityVote`). Being one model, the
ensemble works wherever a model works: ``SparkModel.predict`` and
``evaluate`` (exact), ``KerasModel`` stages, the SQL UDF (one batched
call scores every member), ``.keras`` files and Spark ML persistence.
"""

from __future__ import annotations

import copy
import random
import threading
from typing import Any, Callable, Mapping

from sparkeras.errors import InputError
from sparkeras.metric_values import rounded
from sparkeras.serialization import clone_live

SAMPLINGS = ("partition", "bootstrap")
COMBINES = ("mean", "vote")


class Ensemble:
    """K members of one architecture, trained in parallel on Spark and combined.

    Args:
        model_or_builder: a compiled Keras model (each member is a fresh copy
            with its own initial weights and optimizer) or a function of no
            arguments returning a compiled model (called once per member,
            after seeding Keras with the member's seed).
        members: how many members.
        data_sampling: ``"partition"`` (each member trains on its own
            disjoint share of the rows) or ``"bootstrap"`` (a sample with
            replacement, as large as the data).
        combine: ``"mean"`` of the members' outputs or majority ``"vote"``.
        strategy: how each member's one-worker fit trains.
        max_concurrent: members trained at once (default: the task slots).
        seed: seeds the members' initial weights and data samples.
    """

    def __init__(self, model_or_builder: Any, members: int = 3, data_sampling: str = "partition",
                 combine: str = "mean", *, strategy: Any = "averaging", max_concurrent: int | None = None,
                 seed: int | None = None, custom_objects: Mapping[str, Any] | None = None) -> None:
        if not isinstance(members, int) or isinstance(members, bool) or members < 1:
            raise InputError(f"members must be a positive integer, got {members!r}.")
        if data_sampling not in SAMPLINGS:
            raise InputError(f"data_sampling must be one of {list(SAMPLINGS)}, got {data_sampling!r}.")
        if combine not in COMBINES:
            raise InputError(f"combine must be one of {list(COMBINES)}, got {combine!r}.")
        if max_concurrent is not None and (not isinstance(max_concurrent, int) or max_concurrent < 1):
            raise InputError(f"max_concurrent must be a positive integer, got {max_concurrent!r}.")
        if not callable(model_or_builder):
            raise InputError("model_or_builder must be a compiled Keras model or a function returning one; "
                             f"got {type(model_or_builder).__name__}.")
        self.source = model_or_builder
        self.num_members = members
        self.data_sampling = data_sampling
        self.combine = combine
        self.strategy = strategy
        self.max_concurrent = max_concurrent
        self.seed = random.randrange(2**31) if seed is None else int(seed)
        self.custom_objects = dict(custom_objects or {})
        self.members: list[Any] = []
        self.model: Any = None  # the combined Keras model, once fitted or loaded

    def fit(self, data: Any = None, y: Any = None, *, epochs: int = 1, batch_size: int = 32,
            validation_data: Any = None, features_col: Any = "features", label_col: Any = "label",
            verbose: int = 1, class_weight: Mapping[int, float] | None = None, weight_col: str | None = None,
            sample_weight: Any = None) -> list[Any]:
        """Train every member on its sample of ``data``; returns their ``History`` objects, in member order.

        ``class_weight``, ``weight_col`` and ``sample_weight`` weigh every
        member's training loss, as in :meth:`SparkModel.fit`; a row's weight
        follows it into the members' samples.
        """
        from sparkeras.barrier import registered_slots
        from sparkeras.data.frames import SharedFrames
        from sparkeras.data.weights import check_class_weight, check_row_weights
        from sparkeras.model import _check_positive
        from sparkeras.session import get_spark, running_own_jobs

        _check_positive(epochs=epochs, batch_size=batch_size)
        classes = check_class_weight(class_weight)
        rows = check_row_weights(weight_col, sample_weight, data, class_weight)
        spark = get_spark()
        members = [self._member(i) for i in range(self.num_members)]
        concurrency = min(self.num_members, self.max_concurrent or registered_slots(spark.sparkContext))
        with running_own_jobs(spark), SharedFrames(spark, data, y, validation_data=validation_data,
                                                   features_col=features_col, label_col=label_col, seed=self.seed,
                                                   weight_col=weight_col, sample_weight=rows) as frames:
            samples = self._samples(frames.train)
            weights = {"class_weight": dict(classes) if classes else None, "weight_col": frames.weight_col}
            try:
                histories = _train_all(
                    [lambda i=i, m=m: self._fit_member(i, m, samples[i], frames, epochs, batch_size, weights)
                     for i, m in enumerate(members)], concurrency)
            finally:
                for frame in samples:
                    frame.unpersist()
        self.members = members
        self.model = combine_members(members, self.combine)
        if verbose:
            for i, h in enumerate(histories):
                last = {k: rounded(v[-1], 4) for k, v in h.history.items()}
                print(f"member {i}: {last}")
        return histories

    def _member(self, index: int) -> Any:
        import keras

        keras.utils.set_random_seed(self.seed + index)
        if isinstance(self.source, keras.Model):
            if not getattr(self.source, "compiled", False):
                raise InputError("Compile the model before building an ensemble from it.")
            member = clone_live(self.source)
        else:
            member = self.source()
            if not isinstance(member, keras.Model):
                raise InputError(f"The ensemble's builder returned a {type(member).__name__}, not a Keras model.")
        member.name = f"member_{index}"
        return member

    def _samples(self, frame: Any) -> list[Any]:
        """One cached DataFrame per member: its share of the rows, or its bootstrap sample."""
        if self.data_sampling == "partition":
            parts = frame.randomSplit([1.0] * self.num_members, seed=self.seed) if self.num_members > 1 else [frame]
        else:
            parts = [frame.sample(withReplacement=True, fraction=1.0, seed=self.seed + i)
                     for i in range(self.num_members)]
        return [p.cache() for p in parts]

    def _fit_member(self, index: int, member: Any, frame: Any, frames: Any, epochs: int, batch_size: int,
                    weights: Mapping[str, Any]) -> Any:
        from sparkeras.model import SparkModel

        fitter = SparkModel(member, copy.deepcopy(self.strategy), 1, custom_objects=self.custom_objects or None,
                            seed=self.seed + index)
        fitter._follows_autologging = False  # members would each log into one active run, their params clashing
        return fitter.fit(frame, validation_data=frames.validation, epochs=epochs, batch_size=batch_size,
                          features_col=frames.features_col, label_col=frames.label_col, verbose=0, **weights)

    # -- using the ensemble -----------------------------------------------------

    def _fitted(self) -> Any:
        from sparkeras.model import SparkModel

        if self.model is None:
            raise InputError("The ensemble is not trained yet: call fit() (or Ensemble.load) first.")
        return SparkModel(self.model, custom_objects=self.custom_objects or None)

    def predict(self, data: Any = None, **options: Any) -> Any:
        """The combined prediction, as :meth:`SparkModel.predict` gives it (numpy in, numpy out; DataFrame in, DataFrame out)."""
        return self._fitted().predict(data, **options)

    def evaluate(self, data: Any = None, y: Any = None, **options: Any) -> dict[str, float]:
        """The combined model's loss and metrics over every row, exactly (:meth:`SparkModel.evaluate`)."""
        return self._fitted().evaluate(data, y, **options)

    def save(self, path: str, overwrite: bool = False) -> None:
        """Write the combined model as one ``.keras`` file (atomically; see :meth:`SparkModel.save`)."""
        self._fitted().save(path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str, custom_objects: Mapping[str, Any] | None = None) -> "Ensemble":
        """An ensemble saved by :meth:`save`: its combined model and members."""
        import keras

        from sparkeras.ensemble.layers import MajorityVote
        from sparkeras.model import load_model_file

        model = load_model_file(path, custom_objects)
        members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
        if not members:
            raise InputError(f"{path} holds a Keras model, but not an ensemble saved by Ensemble.save.")
        combine = "vote" if any(isinstance(layer, MajorityVote) for layer in model.layers) else "mean"
        ensemble = cls(model, members=len(members), combine=combine, custom_objects=custom_objects)
        ensemble.members, ensemble.model = members, model
        return ensemble


def combine_members(members: list[Any], combine: str) -> Any:
    """One Keras model that gives its input to every member and combines their outputs, compiled as the first member."""
    import keras

    from sparkeras.data.columns import layer_name
    from sparkeras.ensemble.layers import MajorityVote

    first = members[0]
    tensors = list(first.inputs)
    fresh = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=layer_name(t, f"input_{i}"))
             for i, t in enumerate(tensors)]
    struct = getattr(first, "_inputs_struct", None)
    inputs = keras.tree.pack_sequence_as(struct, fresh) if struct is not None else (
        fresh[0] if len(fresh) == 1 else fresh)
    outputs = [m(inputs) for m in members]
    names = iter(list(getattr(first, "output_names", None) or []))

    def join(*parts: Any) -> Any:
        name = next(names, None)
        if len(parts) == 1:
            return keras.layers.Identity(name=name)(parts[0])
        if combine == "vote":
            return MajorityVote(name=name)(list(parts))
        return keras.layers.Average(name=name)(list(parts))

    combined = keras.tree.map_structure(join, *outputs)
    model = keras.Model(inputs, combined, name=f"ensemble_{combine}_{len(members)}")
    model.compile_from_config(first.get_compile_config())
    return model


def _train_all(jobs: list[Callable[[], Any]], concurrency: int) -> list[Any]:
    """Run ``jobs`` on ``concurrency`` threads; their results in order, or the first error (naming the member)."""
    results: list[Any] = [None] * len(jobs)
    errors: list[tuple[int, BaseException]] = []
    queue = list(enumerate(jobs))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not queue or errors:
                    return
                index, job = queue.pop(0)
            try:
                results[index] = job()
            except BaseException as exc:  # noqa: BLE001 - raised on the driver's thread below
                with lock:
                    errors.append((index, exc))

    threads = [threading.Thread(target=work, name=f"sparkeras-member-{i}", daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    if errors:
        index, exc = min(errors, key=lambda e: e[0])
        raise type(exc)(f"Ensemble member {index} failed: {exc}") if isinstance(exc, InputError) else exc
    return results
