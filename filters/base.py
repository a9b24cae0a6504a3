"""The filter contract: what a filter is, how far it reaches, and chains of them.

A filter is a picklable value with a ``name``, keyword ``params``, a ``halo``
(how many pixels beyond a pixel it reads, computed from its params) and
``apply(tile) -> tile``. ``apply`` takes an array of shape (H, W) or (H, W, C)
and returns an array of the same shape and dtype. Border handling happens inside
``apply`` exactly as on a whole frame; the engine feeds it real neighbour pixels
everywhere else.

Two ways to write one:

* a frozen dataclass subclass of :class:`Filter` (the built-ins), whose fields
  are the params;
* a plain numpy function wrapped by :func:`filter`, as a decorator or a call
  (the same thing, also for a function imported from elsewhere)::

      @filter(halo=lambda radius=1: radius)
      def boxmean(tile, *, radius=1):
          ...

      median3 = filter(halo=1)(mylib.median3)

Filters travel to worker processes as :func:`dumps` makes them: by reference
(module and name) when another process can import them, else by value with
cloudpickle (``__main__``, notebook cells, closures, lambdas, partials).

This module never imports the engine.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import pickle
import sys
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle
import numpy as np

__all__ = [
    "Filter",
    "FilterError",
    "FilterFunction",
    "FunctionFilter",
    "Chain",
    "filter",
    "as_filter",
    "dumps",
]


class FilterError(ValueError):
    """A filter or its parameters are invalid; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Filter:
    """Base class of every filter.

    Subclasses are frozen dataclasses: each field is a keyword parameter with a
    default, validated in ``__post_init__`` (raise :class:`FilterError` naming
    the parameter, the value and the allowed range). They set the class
    attributes ``name`` (the CLI name) and, for filters whose output pixel
    depends only on the same input pixel, ``pointwise = True``.

    ``apply`` returns the input dtype and range: integer frames are computed in
    float32 where needed, rounded and clipped on the way out; float32 frames
    are nominally in [0, 1].
    """

    name = "filter"
    pointwise = False

    @property
    def halo(self) -> int:
        """Pixels beyond a pixel that its output depends on (0 for pointwise)."""
        return 0

    @property
    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def apply(self, tile: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        """``name:key=value,...``, the same text the registry parses."""
        args = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}:{args}" if args else self.name

    @classmethod
    def param_types(cls) -> dict[str, tuple[type, Any]]:
        """Parameter name -> (type, default), for parsing and listing."""
        hints = {}
        for f in dataclasses.fields(cls):
            default = f.default
            kind = type(default) if default is not dataclasses.MISSING else str
            hints[f.name] = (kind, default)
        return hints

    def __reduce__(self):
        # By module, qualname and defining file where a worker can import the
        # class (a class loaded from "path/to/file.py:Name" lives in a module
        # that a worker can only load from its file); by value (cloudpickle)
        # for a class from __main__, a notebook cell or a function body.
        cls = type(self)
        where = _reference(cls, cls.__module__, cls.__qualname__)
        return (_rebuild_filter, (where or cls, self.params))


def _rebuild_filter(where: tuple[str, str, str | None] | type[Filter], params: dict[str, Any]) -> Filter:
    cls = where if isinstance(where, type) else _import_factory(*where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    obj = cls(**{k: v for k, v in params.items() if fields[k].init})
    for k, v in params.items():
        if not fields[k].init:
            object.__setattr__(obj, k, v)
    return obj


# --------------------------------------------------------------------------
# Function filters: @filter(halo=...) on a plain numpy function.


#: Modules whose objects never travel by reference: worker processes do not
#: import the caller's main script or notebook.
_MAIN = ("__main__", "__mp_main__")


def _reference(obj: Any, module: str | None, qualname: str) -> tuple[str, str, str | None] | None:
    """(module, attribute path, file) by which another process imports ``obj``, or None.

    None means ``obj`` must travel by value: it lives in ``__main__`` (a
    script, ``python -c``, stdin, a notebook cell), inside a function, or under
    no module attribute at all. The attribute path is ``qualname`` when that
    finds ``obj``, else the module-level name bound to it (``f = filter(halo=1)(g)``).
    """
    mod = sys.modules.get(module) if module else None
    if module is None or mod is None or module in _MAIN:
        return None
    found: Any = mod
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not obj:
        qualname = next((k for k, v in list(vars(mod).items()) if v is obj), "")
        if not qualname:
            return None
    return module, qualname, getattr(mod, "__file__", None)


def dumps(obj: Any) -> bytes:
    """``obj`` serialised the way filters travel to worker processes and cluster nodes.

    Importable filters are pickled by reference (their module and name); what
    cannot be imported by another process (``__main__``, notebook cells,
    closures, lambdas, ``functools.partial`` of those) is pickled by value with
    cloudpickle. The result loads with :func:`pickle.loads`.
    """
    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _load_module(module: str, path: str | None):
    if module in sys.modules:
        return sys.modules[module]
    try:
        return importlib.import_module(module)
    except ImportError:
        if path is None:
            raise
    return load_file_module(path, module)


def load_file_module(path: str, module: str | None = None):
    """Import a Python file as a module (cached by name in ``sys.modules``).

    The file's folder is appended to ``sys.path`` (as Python does for a script,
    but after every other entry, so that it never hides an installed package):
    a sibling import such as ``import helpers`` works, here and in workers.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.append(folder)
    if module is None:
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        stem = "".join(c if c.isalnum() else "_" for c in str(path).rsplit("/", 1)[-1][:-3])
        module = f"tileproc_plugin_{stem}_{digest}"
    if module in sys.modules:
        return sys.modules[module]
    spec = importlib.util.spec_from_file_location(module, path)
    if spec is None or spec.loader is None:
        raise FilterError(f"cannot import filters from {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[module]
        raise
    return mod


def _import_factory(module: str, qualname: str, path: str | None) -> Any:
    obj = _load_module(module, path)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class FilterFunction:
    """A plain function made into a filter factory by :func:`filter`.

    Calling it with keyword params gives a configured :class:`FunctionFilter`;
    used unconfigured in a chain, it means its defaults.
    """

    pointwise: bool

    def __init__(
        self, func: Callable, halo: int | Callable, name: str | None, pointwise: bool, module: str | None = None
    ):
        if not callable(func):
            raise FilterError(f"filter: expected a function of a tile, got {func!r}")
        inner = getattr(func, "func", func)  # functools.partial has no name of its own
        fname = getattr(func, "__name__", None) or getattr(inner, "__name__", None) or "filter"
        self.func = func
        self._halo = halo
        self.name = name or fname
        self.pointwise = pointwise
        # The module whose code made this filter (where @filter or filter(...)(g)
        # was written), which may differ from the function's own module.
        self.__module__ = module or getattr(func, "__module__", None) or "__main__"
        self.__qualname__ = getattr(func, "__qualname__", fname)
        self.__name__ = fname
        self.__doc__ = getattr(func, "__doc__", None) if not isinstance(func, functools.partial) else inner.__doc__
        self.__wrapped__ = func
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError) as exc:
            raise FilterError(f"{self.name}: cannot read its signature ({exc})") from None
        self._defaults = {p.name: p.default for p in sys_params(sig) if p.default is not inspect.Parameter.empty}
        self._accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())

    def param_types(self) -> dict[str, tuple[type, Any]]:
        return {k: (type(v) if v is not None else str, v) for k, v in self._defaults.items()}

    def __call__(self, **params: Any) -> FunctionFilter:
        unknown = set(params) - set(self._defaults)
        if unknown and not self._accepts_any:
            raise FilterError(
                f"{self.name}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(self._defaults) or 'none'}"
            )
        return FunctionFilter(self, {**self._defaults, **params})

    def halo_for(self, params: dict[str, Any]) -> int:
        if callable(self._halo):
            sig = inspect.signature(self._halo)
            if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
                value = self._halo(**params)
            else:
                value = self._halo(**{k: v for k, v in params.items() if k in sig.parameters})
        else:
            value = self._halo
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise FilterError(f"{self.name}: halo must be an integer >= 0, got {value!r}")
        return int(value)

    def where(self) -> tuple[str, str, str | None] | None:
        """(module, attribute, file) by which a worker imports this factory; None: it travels by value."""
        return _reference(self, self.__module__, self.__qualname__)

    def __reduce__(self):
        where = self.where()
        if where is not None:
            return (_import_factory, where)
        return (FilterFunction, (self.func, self._halo, self.name, self.pointwise, self.__module__))

    def __repr__(self) -> str:
        return f"<filter function {self.name}>"


def sys_params(sig: inspect.Signature):
    """Keyword parameters of a filter function (everything after the tile)."""
    params = list(sig.parameters.values())
    return [p for p in params[1:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


class FunctionFilter:
    """A :class:`FilterFunction` with its params bound: a filter value."""

    def __init__(self, factory: FilterFunction, params: dict[str, Any]):
        self.factory = factory
        self._params = dict(params)
        self.halo = factory.halo_for(self._params)

    name = property(lambda self: self.factory.name)
    pointwise = property(lambda self: self.factory.pointwise)
    params = property(lambda self: dict(self._params))

    def apply(self, tile: np.ndarray) -> np.ndarray:
        return self.factory.func(tile, **self._params)

    def describe(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self._params.items())
        return f"{self.name}:{args}" if args else self.name

    def __reduce__(self):
        return (FunctionFilter, (self.factory, self._params))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FunctionFilter) and other.factory is self.factory and other._params == self._params

    def __hash__(self) -> int:
        return hash((id(self.factory), tuple(sorted(map(repr, self._params.items())))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{self.name}({args})"


def filter(
    func: Callable | None = None,
    *,
    halo: int | Callable = 0,
    name: str | None = None,
    pointwise: bool = False,
):
    """Make a plain numpy function a filter.

    Parameters
    ----------
    halo : int or callable
        How many pixels beyond each output pixel the function reads, or a
        function of the filter's params returning it (``lambda radius=1: radius``).
    name : str, optional
        The name shown in messages and listings (default: the function's name).
    pointwise : bool
        True when each output pixel depends only on the same input pixel.

    Used as a decorator (``@filter(halo=1)``) or called on a function
    (``f = filter(halo=1)(g)``, ``filter(g, halo=1)``): the same thing, for a
    function of this module, an imported one, a lambda or a
    ``functools.partial``. A filter that another process can import by name
    travels so; any other travels by value (see :func:`dumps`).

    Examples
    --------
    >>> @filter(halo=lambda radius=1: radius)
    ... def boxmean(tile, *, radius=1):
    ...     return tile
    >>> boxmean(radius=4).halo
    4
    >>> invert = filter(halo=0, pointwise=True)(lambda tile: ~tile)
    >>> invert().halo
    0
    """

    # Like collections.namedtuple: the module of the code that calls filter()
    # is the filter's home, where another process looks it up by name.
    home = sys._getframe(1).f_globals.get("__name__")

    def wrap(f: Callable) -> FilterFunction:
        return FilterFunction(f, halo=halo, name=name, pointwise=pointwise, module=home)

    return wrap(func) if func is not None else wrap


AnyFilter = Filter | FunctionFilter


def as_filter(obj: Any) -> AnyFilter:
    """A filter value from a filter, an unconfigured :class:`FilterFunction`."""
    if isinstance(obj, (Filter, FunctionFilter)):
        return obj
    if isinstance(obj, FilterFunction):
        return obj()
    if isinstance(obj, type) and issubclass(obj, Filter):
        return obj()
    if callable(obj):
        raise FilterError(
            f"{getattr(obj, '__name__', obj)!s} is a plain function; decorate it with "
            "@filters.filter(halo=N) so tileproc knows how far it reaches"
        )
    raise FilterError(f"not a filter: {obj!r}")


class Chain:
    """Filters applied one after another. Its halo is the sum of its members'.

    A chain is a picklable value; ``blob`` is its pickled form and ``key`` a
    digest of it, which workers use to cache the unpickled chain.
    """

    def __init__(self, filters: Iterable[AnyFilter]):
        self.filters: tuple[AnyFilter, ...] = tuple(as_filter(f) for f in filters)
        if not self.filters:
            raise FilterError("empty filter chain: give at least one filter")
        self.halo = sum(f.halo for f in self.filters)
        self.pointwise = all(f.pointwise for f in self.filters)

    @property
    def name(self) -> str:
        return ",".join(f.name for f in self.filters)

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """The chain on a frame or tile; checks what each filter returns."""
        out = frame
        for f in self.filters:
            result = f.apply(out)
            check_result(f, out, result)
            out = result
        return out

    def check_picklable(self) -> bytes:
        """The chain serialised as it travels to workers (:func:`dumps`), or :class:`FilterError` saying why not.

        The blob is loaded back here too, so a filter that cannot be rebuilt
        is refused before any process starts.
        """
        try:
            blob = dumps(self.filters)
            pickle.loads(blob)
        except Exception as exc:
            raise FilterError(
                f"filter chain {self.name!r} cannot be sent to worker processes: {type(exc).__name__}: {exc}. "
                "A filter's params and whatever its function uses must be picklable "
                "(no open files, locks, generators or live connections)."
            ) from None
        return blob

    def __repr__(self) -> str:
        return f"Chain({', '.join(map(repr, self.filters))})"


def check_result(f: AnyFilter, tile: np.ndarray, result: Any) -> None:
    """Raise :class:`FilterError` unless ``result`` has ``tile``'s shape and dtype."""
    if not isinstance(result, np.ndarray):
        raise FilterError(f"{f.name}: returned {type(result).__name__}, not a numpy array")
    if result.shape != tile.shape or result.dtype != tile.dtype:
        raise FilterError(
            f"{f.name}: returned {result.dtype}{list(result.shape)}, "
            f"expected {tile.dtype}{list(tile.shape)} (same shape and dtype as its input)"
        )
    if result.dtype.kind == "f" and not np.isfinite(result).all():
        raise FilterError(f"{f.name}: returned NaN or infinite values")
