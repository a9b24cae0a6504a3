"""OpenCV for tileproc's modules, imported without leaving a change to the environment behind.

opencv-python's loader (``cv2/__init__.py``) prepends its own library folder
to ``LD_LIBRARY_PATH`` when it is first imported, for the subprocesses a
program starts later (with an empty entry at the end: the current folder). A
host's environment is its own (promise 9), so the caller's value is put back
as soon as the import returns; the loader offers no way to skip the change.
A program that imported cv2 itself keeps what that import did.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

__all__ = ["cv2"]


def _load() -> ModuleType:
    if "cv2" in sys.modules:
        return sys.modules["cv2"]
    before = os.environ.get("LD_LIBRARY_PATH")
    try:
        import cv2
    finally:
        if os.environ.get("LD_LIBRARY_PATH") != before:
            if before is None:
                os.environ.pop("LD_LIBRARY_PATH", None)
            else:
                os.environ["LD_LIBRARY_PATH"] = before
    return cv2


cv2 = _load()
