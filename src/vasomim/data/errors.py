"""What the image readers share: the raster suffixes they list and the one error they raise.

Below both :mod:`vasomim.data.io` and :mod:`vasomim.data.dicom`, so that neither imports the other
to get them.
"""

from __future__ import annotations

import os

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ImageReadError(ValueError):
    """A file that cannot be used as an image or mask. ``str(err)`` is one line: ``path: reason``.

    Args:
        path: The offending file (or item id such as ``run.dcm#f003``).
        reason: What is wrong, one line.  ``None`` means ``path`` is already the whole message: that
            is how a DataLoader re-raises an error from a worker process (with the worker's
            traceback).
    """

    def __init__(self, path: str | os.PathLike, reason: str | None = None):
        self.path = str(path)
        self.reason = None if reason is None else " ".join(str(reason).splitlines())
        super().__init__(self.path if self.reason is None else f"{self.path}: {self.reason}")

    def __reduce__(self):
        return type(self), (self.path, self.reason)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
