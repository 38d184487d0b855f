"""Whether an MLflow tracking server answers, asked once, before a fit or a command starts its work.

Why. MLflow's REST client retries a request that cannot connect 7 times,
with exponential backoff, before it gives up: a fit logging to a stopped
server or a mistyped port (``MLflowLogger(tracking_uri="http://127.0.0.1:5999")``)
read and packed its data, then waited 249 s for the error. One request
here, without retries, answers in milliseconds, so the error comes first
and names the URI. Only ``http`` and ``https`` URIs are asked (a file or
database store is opened by MLflow itself, with its own errors), through
``requests`` as MLflow sends them, so a proxy the environment names is
used here too. A URI that answered is not asked again in this process.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from sparkeras.errors import InputError

ANSWER_SECONDS = 10.0
"""How long the server has to accept the connection, and then to reply. A server that takes it and never replies
(a hung process, a port held by something else) would have every one of MLflow's requests wait 120 s, retried,
while the fit waits for its run."""

_ANSWERED: set[str] = set()


def check_tracking_server(uri: str | None, where: str = "MLflowLogger(tracking_uri=...)") -> None:
    """An :class:`InputError` naming ``uri`` when it is an HTTP(S) tracking server that no one answers at.

    Any HTTP reply counts as an answer, ``401`` or ``404`` included (a
    server is there; MLflow reports what it says), and so does a TLS
    handshake that fails (MLflow's own certificate settings decide that).
    A refused connection, a host name that does not resolve, or no
    connection or no reply within :data:`ANSWER_SECONDS` is the error.
    ``where`` says where the URI came from, for the message.
    """
    if not uri or urlsplit(uri).scheme.lower() not in ("http", "https") or uri in _ANSWERED:
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=(ANSWER_SECONDS, ANSWER_SECONDS), allow_redirects=False)
    except requests.exceptions.SSLError:
        pass  # a server took the connection
    except requests.exceptions.RequestException as exc:
        raise InputError(f"No MLflow tracking server answers at {uri!r} ({_reason(exc)}); start it, or correct "
                         f"the tracking URI ({where}).") from None
    _ANSWERED.add(uri)


def _reason(exc: Exception) -> str:
    import requests

    text = str(exc)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"no connection within {ANSWER_SECONDS:g}s"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return f"it took the connection but sent no reply within {ANSWER_SECONDS:g}s"
    if "Connection refused" in text:
        return "connection refused"
    if "resolve" in text or "Name or service not known" in text or "nodename nor servname" in text:
        return "its host name does not resolve"
    return " ".join(text.split())[:200]
