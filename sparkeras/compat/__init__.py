"""Fronts that let users of other libraries keep their scripts: :mod:`sparkeras.compat.elephas`."""
