"""The ``sparkeras`` logger: every message of the library goes through it.

Progress bars and result lines that ``verbose`` asks for are display, written
to stdout like Keras' own; everything else (relaunches, resumed checkpoints,
ignored arguments, tracking trouble) is a log record under ``sparkeras``, so
users route, filter or silence it with the ``logging`` module. No handler is
added: warnings reach stderr through Python's last-resort handler until the
application configures logging.
"""

import logging

logger = logging.getLogger("sparkeras")


class KerasRetracingFilter(logging.Filter):
    """Drops TensorFlow's "excessive retracing" warning about Keras' own per-model step functions.

    Why. Keras makes each model's predict, test and train function anew,
    and TensorFlow counts traces by the Python function's code object,
    which every model's function shares. A scikit-learn grid search or
    ``cross_val_score`` over a ``KerasRegressor`` scores a fresh model per
    fold, so from the sixth on the driver printed "5 out of the last 5
    calls to <function TensorFlowTrainer.make_predict_function.<locals>.
    one_step_on_data_distributed> triggered tf.function retracing", with
    advice that does not apply: nothing is traced twice. Warnings about the
    user's own functions are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message and "Trainer.make_" in message)


def quiet_keras_retracing() -> None:
    """Put :class:`KerasRetracingFilter` on TensorFlow's logger, once per process."""
    tensorflow = logging.getLogger("tensorflow")
    if not any(isinstance(f, KerasRetracingFilter) for f in tensorflow.filters):
        tensorflow.addFilter(KerasRetracingFilter())
