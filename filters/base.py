"""The filter contract: what a filter is, how far it reaches, and chains of them.

A filter is a picklable value with a ``name``, keyword ``params``, a ``halo``
(how many pixels beyond a pixel it reads, computed from its params) and
``apply(tile) -> tile``. ``apply`` takes an array of shape (H, W) or (H, W, C)
and returns an array of the same shape and dtype. Border handling happens inside
``apply`` exactly as on a whole frame; the engine feeds it real neighbour pixels
everywhere else.

A filter may also change the frame's size (``reshapes``: a resize, an x2
upscaler). Such a filter says what it makes of a frame (``output_shape``), which
input rectangle a rectangle of its output needs (``source_rect``) and computes
an output rectangle from that window (``apply_rect``). A chain maps each output
rectangle back through every stage, each in its own pixels (:func:`plan_stages`);
the same-size filters take part with their halo.

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
import math
import os
import pickle
import sys
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "Filter",
    "FilterError",
    "FilterFunction",
    "FunctionFilter",
    "Chain",
    "Stage",
    "filter",
    "as_filter",
    "plan_stages",
    "output_shape",
    "check_stage",
    "dumps",
]

Rect4 = tuple[int, int, int, int]  # rows r0:r1, columns c0:c1 (half-open)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One filter's part in computing an output rectangle of a chain.

    ``shape`` is the (rows, cols) of the frame the filter reads, ``window`` the
    rectangle of it that it reads and ``rect`` the rectangle of its own output
    that it produces; rectangles are ``(r0, r1, c0, c1)``, half-open.
    """

    shape: tuple[int, int]
    window: Rect4
    rect: Rect4


class _Geometry:
    """How a filter maps rectangles: by its halo, at the same size (the default)."""

    reshapes = False

    def output_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the output for an input of ``shape`` (rows, cols)."""
        return (int(shape[0]), int(shape[1]))

    def source_rect(self, rect: Rect4, shape: tuple[int, int]) -> Rect4:
        """The input rectangle that output ``rect`` depends on, for an input of ``shape``."""
        h = self.halo  # type: ignore[attr-defined]
        r0, r1, c0, c1 = rect
        return (max(r0 - h, 0), min(r1 + h, shape[0]), max(c0 - h, 0), min(c1 + h, shape[1]))

    def apply_rect(self, x: np.ndarray, stage: Stage) -> np.ndarray:
        """Output ``stage.rect`` computed from ``x``, the pixels of ``stage.window``."""
        out = self.apply(x)  # type: ignore[attr-defined]
        check_result(self, x, out)  # type: ignore[arg-type]
        return out[_inside(stage.rect, stage.window)]


def _inside(rect: Rect4, outer: Rect4, scale: tuple[Fraction, Fraction] = (Fraction(1), Fraction(1))) -> tuple:
    """Slices of ``rect`` in an array whose first pixel is ``outer``'s first times ``scale``."""
    r = int(outer[0] * scale[0])
    c = int(outer[2] * scale[1])
    return (slice(rect[0] - r, rect[1] - r), slice(rect[2] - c, rect[3] - c))


def plan_stages(filters: Sequence[Any], rect: Rect4, shape: Sequence[int]) -> tuple[Stage, ...]:
    """Map output rectangle ``rect`` of a chain back through every stage to the input.

    ``shape`` is the input frame's shape. Each stage's window is computed in
    that stage's own pixels (scale, then halo). The first stage's ``window`` is
    what the chain reads from the input frame.

    Examples
    --------
    >>> from filters.registry import resolve
    >>> chain = resolve("blur:sigma=1,resize:scale=0.5")
    >>> [s.window for s in plan_stages(chain.filters, (0, 2, 0, 2), (8, 8))]
    [(0, 8, 0, 8), (0, 4, 0, 4)]
    """
    sizes = [(int(shape[0]), int(shape[1]))]
    for f in filters:
        sizes.append(f.output_shape(sizes[-1]))
    stages = []
    for f, size in zip(reversed(filters), reversed(sizes[:-1])):
        window = tuple(int(v) for v in f.source_rect(rect, size))
        stages.append(Stage(size, window, rect))  # type: ignore[arg-type]
        rect = window  # type: ignore[assignment]
    return tuple(reversed(stages))


def output_shape(filters: Sequence[Any], shape: Sequence[int]) -> tuple[int, ...]:
    """The shape a chain of ``filters`` makes of a frame of ``shape`` (channels kept)."""
    size = (int(shape[0]), int(shape[1]))
    for f in filters:
        size = f.output_shape(size)
    return (*size, *shape[2:])


class FilterError(ValueError):
    """A filter or its parameters are invalid; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Filter(_Geometry):
    """Base class of every filter.

    Subclasses are frozen dataclasses: each field is a keyword parameter with a
    default, validated in ``__post_init__`` (raise :class:`FilterError` naming
    the parameter, the value and the allowed range). They set the class
    attributes ``name`` (the CLI name) and, for filters whose output pixel
    depends only on the same input pixel, ``pointwise = True``. A filter that
    changes the frame's size sets ``reshapes = True`` and overrides
    ``output_shape``, ``source_rect`` and ``apply_rect`` (see the module notes).

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

    def apply_into(self, tile: np.ndarray, out: np.ndarray) -> None:
        """``out[...] = self.apply(tile)``, without the intermediate array where the kernel can
        write into ``out`` itself (``out``: same shape and dtype as the result, not ``tile``)."""
        out[...] = self.apply(tile)

    def threaded(self, dtype: np.dtype) -> bool:
        """Whether one ``apply`` on a frame of ``dtype`` already spreads over OpenCV's threads.

        A caller that would run tiles on threads of its own gains nothing by cutting
        a frame for a chain of such filters: only halos computed twice and threads
        competing for the cores.
        """
        return False

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
    import cloudpickle  # only when a filter travels: an in-process job never pays for it

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

    The module's name carries a digest of the file's path and contents, so a
    file edited between jobs is a new module: a long-lived worker (a Dask
    worker, a warm engine) never runs a stale copy of it. Given a ``module``
    name (a worker loading what the parent loaded), the file must still have
    the contents that name was made from, else :class:`FilterError`.

    The file's folder is appended to ``sys.path`` (as Python does for a script,
    but after every other entry, so that it never hides an installed package):
    a sibling import such as ``import helpers`` works, here and in workers.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.append(folder)
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as exc:
        raise FilterError(f"cannot read filters from {path} ({exc.strerror or exc})") from None
    digest = hashlib.sha1(str(path).encode() + b"\0" + source).hexdigest()[:12]
    stem = "".join(c if c.isalnum() else "_" for c in str(path).rsplit("/", 1)[-1][:-3])
    made = f"tileproc_plugin_{stem}_{digest}"
    if module is None:
        module = made
    elif module.startswith("tileproc_plugin_") and module != made and module not in sys.modules:
        raise FilterError(f"{path}: the file changed since this job loaded it; run the job again")
    if module in sys.modules:
        return sys.modules[module]
    spec = importlib.util.spec_from_file_location(module, path)
    if spec is None:
        raise FilterError(f"cannot import filters from {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        exec(compile(source, path, "exec"), mod.__dict__)  # the very bytes the name's digest was made from
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
        self,
        func: Callable,
        halo: int | Callable,
        name: str | None,
        pointwise: bool,
        module: str | None = None,
        scale: float | Fraction | Callable | None = None,
    ):
        if not callable(func):
            raise FilterError(f"filter: expected a function of a tile, got {func!r}")
        inner = getattr(func, "func", func)  # functools.partial has no name of its own
        fname = getattr(func, "__name__", None) or getattr(inner, "__name__", None) or "filter"
        self.func = func
        self._halo = halo
        self._scale = scale
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
            value = self._call_with(self._halo, params)
        else:
            value = self._halo
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise FilterError(f"{self.name}: halo must be an integer >= 0, got {value!r}")
        return int(value)

    def scale_for(self, params: dict[str, Any]) -> Fraction | None:
        """The declared scale for ``params`` as a fraction; None when the size is kept."""
        value = self._call_with(self._scale, params) if callable(self._scale) else self._scale
        if value is None:
            return None
        try:
            if isinstance(value, bool):
                raise TypeError
            scale = Fraction(value).limit_denominator(10_000)
        except (TypeError, ValueError):
            raise FilterError(f"{self.name}: scale must be a number > 0, got {value!r}") from None
        if not 0 < scale <= 64:
            raise FilterError(f"{self.name}: scale must be > 0 and <= 64, got {value!r}")
        return None if scale == 1 else scale

    @staticmethod
    def _call_with(fn: Callable, params: dict[str, Any]) -> Any:
        sig = inspect.signature(fn)
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return fn(**params)
        return fn(**{k: v for k, v in params.items() if k in sig.parameters})

    def where(self) -> tuple[str, str, str | None] | None:
        """(module, attribute, file) by which a worker imports this factory; None: it travels by value."""
        return _reference(self, self.__module__, self.__qualname__)

    def __reduce__(self):
        where = self.where()
        if where is not None:
            return (_import_factory, where)
        return (FilterFunction, (self.func, self._halo, self.name, self.pointwise, self.__module__, self._scale))

    def __repr__(self) -> str:
        return f"<filter function {self.name}>"


def sys_params(sig: inspect.Signature):
    """Keyword parameters of a filter function (everything after the tile)."""
    params = list(sig.parameters.values())
    return [p for p in params[1:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


class _Scaled(_Geometry):
    """Geometry of a filter whose ``apply`` returns ``round(size * scale)`` for any input size.

    ``scale`` is a Fraction p/q (None: the size is kept, halo geometry) and
    ``halo`` is in input pixels. Windows start on multiples of q input pixels,
    so that each window's output starts on a whole output pixel.
    """

    scale: Fraction | None

    def output_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        if self.scale is None:
            return super().output_shape(shape)
        return (scaled_size(shape[0], self.scale), scaled_size(shape[1], self.scale))

    def source_rect(self, rect: Rect4, shape: tuple[int, int]) -> Rect4:
        if self.scale is None:
            return super().source_rect(rect, shape)
        s, q, h = self.scale, self.scale.denominator, self.halo  # type: ignore[attr-defined]
        spans = []
        for o0, o1, n in ((rect[0], rect[1], shape[0]), (rect[2], rect[3], shape[1])):
            i0 = math.floor(o0 / s) - h
            i1 = math.ceil(o1 / s) + h
            spans += [max(0, i0 // q * q), min(n, -(-i1 // q) * q)]
        return (spans[0], spans[1], spans[2], spans[3])

    def apply_rect(self, x: np.ndarray, stage: Stage) -> np.ndarray:
        if self.scale is None:
            return super().apply_rect(x, stage)
        out = self.apply(x)  # type: ignore[attr-defined]
        want = (*self.output_shape(x.shape[:2]), *x.shape[2:])
        if not isinstance(out, np.ndarray) or out.shape != want or out.dtype != x.dtype:
            got = f"{out.dtype}{list(out.shape)}" if isinstance(out, np.ndarray) else type(out).__name__
            raise FilterError(
                f"{self.name}: returned {got} for a {x.dtype}{list(x.shape)} input, expected "  # type: ignore[attr-defined]
                f"{x.dtype}{list(want)} (the input's size times its declared scale {self.scale}, rounded)"
            )
        return out[_inside(stage.rect, stage.window, (self.scale, self.scale))]


class FunctionFilter(_Scaled):
    """A :class:`FilterFunction` with its params bound: a filter value.

    With a declared ``scale`` s (a fraction p/q), the function's output for an
    input of n pixels has ``round(n * s)`` (halves up); the engine feeds it
    windows that start on multiples of q input pixels, so that each window's
    output starts on a whole output pixel.
    """

    def __init__(self, factory: FilterFunction, params: dict[str, Any]):
        self.factory = factory
        self._params = dict(params)
        self.halo = factory.halo_for(self._params)
        self.scale = factory.scale_for(self._params)
        self.reshapes = self.scale is not None

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
    scale: float | Fraction | Callable | None = None,
):
    """Make a plain numpy function a filter.

    Parameters
    ----------
    halo : int or callable
        How many pixels beyond each output pixel the function reads, or a
        function of the filter's params returning it (``lambda radius=1: radius``).
        For a filter with a ``scale``, in input pixels.
    scale : number, Fraction or callable, optional
        For a function that changes the frame's size: output size over input
        size (2, 0.5, ``Fraction(2, 3)``), or a function of the params giving
        it. The output of an (H, W) input is ``(round(H*scale), round(W*scale))``,
        halves rounded up, at least 1.
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
    >>> @filter(scale=2)
    ... def double(tile):
    ...     return tile.repeat(2, axis=0).repeat(2, axis=1)
    >>> double().output_shape((3, 5))
    (6, 10)
    """

    # Like collections.namedtuple: the module of the code that calls filter()
    # is the filter's home, where another process looks it up by name.
    home = sys._getframe(1).f_globals.get("__name__")

    def wrap(f: Callable) -> FilterFunction:
        return FilterFunction(f, halo=halo, name=name, pointwise=pointwise, module=home, scale=scale)

    return wrap(func) if func is not None else wrap


AnyFilter = Filter | FunctionFilter


def scaled_size(n: int, scale: Fraction) -> int:
    """``round(n * scale)``, halves up, at least 1."""
    return max(1, math.floor(n * scale + Fraction(1, 2)))


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
        self.reshapes = any(f.reshapes for f in self.filters)

    @property
    def name(self) -> str:
        return ",".join(f.name for f in self.filters)

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """The chain on a frame or tile; checks what each filter returns."""
        out = frame
        if self.reshapes:
            shape = self.output_shape(frame.shape)
            stages = self.plan((0, shape[0], 0, shape[1]), frame.shape)
            out = frame[_inside(stages[0].window, (0, 0, 0, 0))]
        for i, f in enumerate(self.filters):
            if self.reshapes:
                result = f.apply_rect(out, stages[i])
                check_stage(f, out, result, stages[i])
            else:
                result = f.apply(out)
                check_result(f, out, result)
            out = result
        return out

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of the chain's output for a frame of ``shape`` (channels kept)."""
        return output_shape(self.filters, shape)

    def plan(self, rect: Rect4, shape: Sequence[int]) -> tuple[Stage, ...]:
        """Output ``rect`` mapped back through every stage; see :func:`plan_stages`."""
        return plan_stages(self.filters, rect, shape)

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


def check_stage(f: AnyFilter, x: np.ndarray, result: Any, stage: Stage) -> None:
    """Raise :class:`FilterError` unless ``result`` is ``stage.rect`` of ``x``'s dtype and channels."""
    r0, r1, c0, c1 = stage.rect
    want = (r1 - r0, c1 - c0, *x.shape[2:])
    if not isinstance(result, np.ndarray) or result.shape != want or result.dtype != x.dtype:
        got = f"{result.dtype}{list(result.shape)}" if isinstance(result, np.ndarray) else type(result).__name__
        raise FilterError(f"{f.name}: returned {got}, expected {x.dtype}{list(want)}")
    if result.dtype.kind == "f" and not np.isfinite(result).all():
        raise FilterError(f"{f.name}: returned NaN or infinite values")


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
