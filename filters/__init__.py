"""tileproc's filter library: numpy-in, numpy-out filters that declare their reach.

Never imports the engine (``tiler``); usable on its own.
"""

from filters.base import Chain, Filter, FilterError, FilterFunction, FunctionFilter, as_filter, filter

__all__ = ["Chain", "Filter", "FilterError", "FilterFunction", "FunctionFilter", "as_filter", "filter"]
