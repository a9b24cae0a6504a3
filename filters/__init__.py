"""tileproc's filter library: numpy-in, numpy-out filters that declare their reach.

Never imports the engine (``tiler``); usable on its own.

>>> import numpy as np
>>> chain = resolve("blur:sigma=2,sharpen")
>>> chain.apply(np.zeros((8, 8, 3), np.uint8)).shape
(8, 8, 3)
"""

from filters.base import Chain, Filter, FilterError, FilterFunction, FunctionFilter, as_filter, filter
from filters.blur import BoxBlur, GaussianBlur
from filters.color import Contrast, Gamma, Grayscale, Invert, Threshold
from filters.edges import Edges, Emboss
from filters.rank import Median
from filters.registry import FilterInfo, available, resolve
from filters.resize import Resize
from filters.sharpen import Sharpen

__all__ = [
    "Chain",
    "Filter",
    "FilterError",
    "FilterFunction",
    "FunctionFilter",
    "as_filter",
    "filter",
    "resolve",
    "available",
    "FilterInfo",
    "check_filter",
    "GaussianBlur",
    "BoxBlur",
    "Median",
    "Sharpen",
    "Edges",
    "Emboss",
    "Grayscale",
    "Invert",
    "Contrast",
    "Gamma",
    "Threshold",
    "Resize",
]


def __getattr__(name: str):
    # check_filter (filters.testing, which starts subprocesses) is for filter authors: loaded on first use
    if name == "check_filter":
        import importlib

        return importlib.import_module("filters.testing").check_filter
    raise AttributeError(f"module 'filters' has no attribute {name!r}")
