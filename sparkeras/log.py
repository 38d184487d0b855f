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
