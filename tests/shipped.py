"""A Python interpreter that cannot import the installed sparkeras, as on an executor where it was never installed.

It finds sparkeras only inside a zip on its path, which is how ``spark-submit --py-files sparkeras.zip`` and
``addPyFile`` ship it: Spark puts the zip on the driver's path and on each task's, and nowhere else.
"""

from __future__ import annotations

import os
import shutil
import sys

BLOCKER = '''
import importlib.machinery, sys


class OnlyShipped:
    """sparkeras from a zip on sys.path, never from the installed copy."""

    def find_spec(self, name, path=None, target=None):
        if name != "sparkeras":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if p.endswith(".zip")])
        if spec is None:
            raise ModuleNotFoundError("No module named 'sparkeras'", name=name)
        return spec


sys.meta_path.insert(0, OnlyShipped())
'''


def python_without_sparkeras(folder) -> str:
    """An executable that runs this interpreter with sparkeras hidden, unless shipped in a zip (``BLOCKER``)."""
    site = os.path.join(folder, "site")
    os.makedirs(site, exist_ok=True)
    with open(os.path.join(site, "sitecustomize.py"), "w") as f:
        f.write(BLOCKER)
    python = os.path.join(folder, "python")
    with open(python, "w") as f:
        f.write(f'#!/bin/sh\nPYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec {sys.executable} "$@"\n')
    os.chmod(python, 0o755)
    return python


def sparkeras_zip(folder) -> str:
    """The sparkeras package zipped, as a user ships it with ``--py-files``."""
    import sparkeras

    package = os.path.dirname(os.path.abspath(sparkeras.__file__))
    return shutil.make_archive(os.path.join(folder, "sparkeras"), "zip", os.path.dirname(package), "sparkeras")
