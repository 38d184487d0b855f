"""``ImageFeaturizer``: a Keras model cut at a named layer, as a Spark ML stage that writes embeddings.

Transfer learning in Spark, as Deep Learning Pipelines' ``DeepImageFeaturizer``
offered it, but for any Keras model: a ``keras.applications`` network (with
weights from a file the user gives, or ``weights=None``), or a model of
one's own trained on other data. The stage keeps only the layers up to
``layer`` and writes their output, flattened, as a Spark ML ``Vector``
column (with its size in the column's metadata, as ``VectorAssembler``
writes it), so any Spark ML estimator (``LogisticRegression``, as Deep
Learning Pipelines' examples used) or a ``KerasEstimator`` trains on it in
the same ``Pipeline``; ``outputType="array"`` writes ``array<float>``.

The input column is whatever the cut model takes: ``read_images``' image
bytes, decoded on the executors, or numeric arrays. Prediction runs through
sparkeras' batched Arrow path, so each Python worker builds the network
once. The stage saves and loads with Spark ML persistence, alone or in a
``PipelineModel``: the cut model as ``model.keras``, the Params as metadata.
"""

from __future__ import annotations

from typing import Any

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol

from sparkeras.errors import InputError
from sparkeras.ml.estimator import _KerasStage


class ImageFeaturizer(HasInputCol, HasOutputCol, Transformer, _KerasStage):
    """Embeddings from a Keras model cut at ``layer``, as a Spark ML Transformer.

    Args:
        model: a ``keras.Model`` (for example
            ``keras.applications.MobileNetV3Small(weights="path/to/weights.h5")``
            or one trained before), or the path of a ``.keras`` file.
        inputCol: the column the model takes (default ``image``: image files
            from :func:`sparkeras.read_images`).
        outputCol: the embeddings column (default ``features``).
        outputType: ``"vector"`` (default): a Spark ML ``Vector`` that every Spark ML
            estimator takes; ``"array"``: ``array<float>``, half the bytes per value.
        layer: the name of the layer whose output is the embedding (see
            ``model.summary()``); empty for the model's own output.
        batchSize: images per model call on the executors.
    """

    layer: Param[str] = Param(Params._dummy(), "layer", "name of the layer whose output is the embedding; empty "
                              "for the model's output", typeConverter=TypeConverters.toString)
    batchSize: Param[int] = Param(Params._dummy(), "batchSize", "rows per model call",
                                  typeConverter=TypeConverters.toInt)
    outputType: Param[str] = Param(Params._dummy(), "outputType", "'vector' (a Spark ML Vector) or 'array' "
                                   "(array<float>)", typeConverter=TypeConverters.toString)

    @keyword_only
    def __init__(self, *, model: Any = None, inputCol: str = "image", outputCol: str = "features",
                 layer: str = "", batchSize: int = 64, outputType: str = "vector") -> None:
        super().__init__()
        self._setDefault(inputCol="image", outputCol="features", layer="", batchSize=64, outputType="vector")
        kwargs = dict(self._input_kwargs)
        model = kwargs.pop("model", None)
        self._set(**kwargs)
        _output_type(self.getOrDefault(self.outputType))
        self._keras_model = None if model is None else cut_at(model, self.getOrDefault(self.layer))

    def setParams(self, **params: Any) -> "ImageFeaturizer":
        return self._set(**params)

    @property
    def model(self) -> Any:
        """The Keras model up to ``layer``: what this stage runs."""
        return self._keras_model

    def _transform(self, dataset: Any) -> Any:
        from sparkeras.inference.batch import OutputColumn
        from sparkeras.inference.udf import add_predictions, output_widths

        if self._keras_model is None:
            raise InputError("ImageFeaturizer needs a model: ImageFeaturizer(model=keras_model, layer='...').")
        width = output_widths(self._keras_model)[0]
        vector = _output_type(self.getOrDefault(self.outputType)) == "vector"
        name = self.getOutputCol()
        output = OutputColumn(name, 0, width, vector=vector)
        out = add_predictions(dataset, self._keras_model, self.getInputCol(), [output],
                              self.getOrDefault(self.batchSize), rename="name the embeddings with setOutputCol")
        # The size, as VectorAssembler records it: later stages check widths without scoring a row.
        return out.withMetadata(name, {"ml_attr": {"num_attrs": width}}) if vector else out


def _output_type(value: str) -> str:
    if value not in ("vector", "array"):
        raise InputError(f"ImageFeaturizer's outputType must be 'vector' or 'array', got {value!r}.")
    return value


def cut_at(model: Any, layer: str = "") -> Any:
    """``model`` (or the ``.keras`` file it names) up to the output of ``layer``; the whole model for ``""``.

    Raises :class:`InputError` naming the layers there are, for a name that
    is not one of them, or for a model with several outputs left uncut.
    """
    import keras

    if isinstance(model, str):
        from sparkeras.model import load_model_file

        model = load_model_file(model)
    if not isinstance(model, keras.Model):
        raise InputError(f"ImageFeaturizer needs a keras.Model or the path of a .keras file, got "
                         f"{type(model).__name__}.")
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise InputError("ImageFeaturizer's model has no known input shape: start it with keras.Input(shape=...) "
                         "or build it.")
    if layer:
        names = [lay.name for lay in model.layers]
        if layer not in names:
            raise InputError(f"ImageFeaturizer: the model has no layer {layer!r}; its layers are {names}.")
        if model.get_layer(layer) is model.layers[-1] and len(model.outputs) == 1:
            return model
        return keras.Model(model.inputs, model.get_layer(layer).output, name=f"{model.name}_to_{layer}")
    if len(model.outputs) != 1:
        raise InputError(f"ImageFeaturizer's model has {len(model.outputs)} outputs; name the layer whose output "
                         "is the embedding with layer='...'.")
    return model


__all__ = ["ImageFeaturizer", "cut_at"]
