"""MLflow's autologging, followed by ``SparkModel.fit``.

``mlflow.autolog()`` (on by default in Databricks notebooks) and
``mlflow.keras.autolog()`` log a Keras fit by patching
``keras.Model.fit``. A sparkeras fit never calls that method on the
driver, so without this module a user who turned autologging on would
find an empty run. Here a fit reads MLflow's own autologging settings and,
where MLflow would have logged a ``model.fit``, logs through
:class:`~sparkeras.tracking.mlflow.MLflowLogger`: into the active run, or
a run of its own that ends with the fit.

MLflow's rules are kept:

* nothing is logged unless the ``keras`` (or, failing that,
  ``tensorflow``) integration was configured and is not disabled, and
  nothing while MLflow has autologging switched off around a call;
* ``exclusive=True`` logs nothing into a run the user started;
* a fit inside another integration's autologged call (scikit-learn's
  ``GridSearchCV.fit``, a Spark ML ``Pipeline.fit``) is left to that
  integration, which logs the outer call, as MLflow's own Keras patch is;
* ``log_models``, ``registered_model_name`` and ``extra_tags`` mean what
  they mean there.

MLflow is never imported here: if the user has not imported it, its
autologging cannot be on, and the check costs nothing.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Sequence

from sparkeras.log import logger

FLAVORS = ("keras", "tensorflow")  # MLflow's integrations that patch keras.Model.fit


def autologging_logger(callbacks: Sequence[Any] | None) -> Any:
    """An ``MLflowLogger`` configured as MLflow's autologging is, or ``None`` where it would log nothing.

    ``None`` also where ``callbacks`` already hold a tracker (an
    ``MLflowLogger`` of the user's, or ``KerasEstimator``'s), which
    logs the fit its own way.
    """
    utils = sys.modules.get("mlflow.utils.autologging_utils")
    if utils is None or any(hasattr(c, "on_fit_start") for c in callbacks or ()):
        return None
    configured = getattr(utils, "AUTOLOGGING_INTEGRATIONS", {})
    flavor = next((f for f in FLAVORS if f in configured), None)
    if flavor is None or utils.autologging_is_disabled(flavor) or getattr(
            utils, "_AUTOLOGGING_GLOBALLY_DISABLED", False) or _inside_autologged_call():
        return None

    def setting(key: str, default: Any = None) -> Any:
        return utils.get_autologging_config(flavor, key, default)

    import mlflow

    if setting("exclusive", False) and mlflow.active_run() is not None:
        return None
    log_model = bool(setting("log_models", True))
    return _autologging_logger_class()(
        log_model=log_model, registered_model_name=setting("registered_model_name") if log_model else None,
        tags={**(setting("extra_tags") or {}), "mlflow.autologging": flavor})


@functools.cache
def _autologging_logger_class() -> type:
    """:class:`MLflowLogger` as autologging runs it: the run complete when ``fit`` returns.

    The user never holds this logger, so there is no ``logger.wait()`` to
    call; MLflow's documented way to reach an autologged run is
    ``mlflow.last_active_run()`` after the fit, which must find it
    finished, its model uploaded and registered. So the fit waits for its
    writes, as MLflow's own Keras autologging does, and the run it created
    becomes this thread's last active run. And as there, tracking trouble
    (a store that refuses the run, say) is a warning, never the fit's error:
    the user asked for training, and autologging only came along.
    """
    from sparkeras.tracking.mlflow import MLflowLogger

    class AutologgingLogger(MLflowLogger):
        autologging = True

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            try:
                super().on_train_begin(logs)
            except Exception as exc:  # noqa: BLE001 - as MLflow's autologging: warn, and train untracked
                logger.warning("MLflow autologging cannot log this fit: %s", exc)
                self.run, self._logged_model = None, None

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            try:
                super().on_train_end(logs)
                self.wait()
            except Exception as exc:  # noqa: BLE001 - the fit itself succeeded
                logger.warning("MLflow autologging could not finish logging this fit: %s", exc)
                return
            if self.run is not None and self.run.owned:
                set_last_active_run(self.run.run_id)

    return AutologgingLogger


def set_last_active_run(run_id: str) -> None:
    """What ``mlflow.last_active_run()`` returns in this thread, as MLflow sets it when a fluent run ends."""
    try:
        from mlflow.tracking.fluent import _last_active_run_id
    except ImportError:  # a later MLflow moved it; the run is complete all the same
        return
    _last_active_run_id.set(run_id)


def _inside_autologged_call() -> bool:
    """Whether another MLflow integration is logging the call this fit runs in (MLflow's autologging session)."""
    try:
        from mlflow.utils.autologging_utils.safety import _AutologgingSessionManager
    except ImportError:  # a later MLflow moved it: log, as outside such a call
        return False
    return _AutologgingSessionManager.active_session() is not None
