"""Images where they live: image files read, decoded and resized on the executors, for training and scoring.

``read_images`` turns a folder of image files into a DataFrame whose
``image`` column every sparkeras fit and prediction takes as a model input;
:mod:`sparkeras.images.decode` turns those bytes into pixels, batch by batch,
inside the tasks.
"""

from sparkeras.images.reader import read_images, skipped_images

__all__ = ["read_images", "skipped_images"]
