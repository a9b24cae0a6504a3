"""Filter names and chain specs: ``"blur:sigma=3,sharpen"`` -> :class:`Chain`.

A spec lists filters separated by commas. A token with ``=`` is a parameter of
the filter before it; any other token starts a new filter, and its first
parameter may follow a colon::

    blur:sigma=3,truncate=3,sharpen:amount=0.5,grayscale

A filter name is one of

* a built-in name (see :data:`BUILTINS`);
* ``package.module:attr``: imported;
* ``path/to/file.py:attr`` (relative to the working directory, or absolute):
  loaded from the file;
* a name that an installed package declares in the ``tileproc.filters``
  entry-point group, e.g. in its ``pyproject.toml``::

      [project.entry-points."tileproc.filters"]
      boxmean = "mypkg.filters:boxmean"

The named object may be a :class:`Filter` subclass, a :func:`filter`-decorated
function, a configured filter, or a :class:`Chain` (which takes no params).
Parameter values are parsed to the type of the parameter's default.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Union

from filters.base import (
    Chain,
    Filter,
    FilterError,
    FilterFunction,
    FunctionFilter,
    as_filter,
    load_file_module,
)
from filters.blur import BoxBlur, GaussianBlur
from filters.color import Contrast, Gamma, Grayscale, Invert, Threshold
from filters.edges import Edges, Emboss
from filters.rank import Median
from filters.resize import Resize
from filters.sharpen import Sharpen

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = [
    "BUILTINS",
    "OPTIONAL",
    "ENTRY_POINT_GROUP",
    "FilterInfo",
    "Spec",
    "available",
    "lookup",
    "parse",
    "resolve",
]

ENTRY_POINT_GROUP = "tileproc.filters"

#: Built-in filters that need an optional extra: name -> (module, class, extra).
OPTIONAL: Mapping[str, tuple[str, str, str]] = MappingProxyType({"onnx": ("filters.onnx", "Onnx", "onnx")})

#: Built-in filter classes by name, in the order ``available()`` lists them.
BUILTINS: Mapping[str, type[Filter]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (
            GaussianBlur,
            BoxBlur,
            Median,
            Sharpen,
            Edges,
            Emboss,
            Grayscale,
            Invert,
            Contrast,
            Gamma,
            Threshold,
            Resize,
        )
    }
)

AnyFilter = Union[Filter, FunctionFilter]  # noqa: UP007 - runtime aliases on Python 3.10
Spec = Union[str, Filter, FilterFunction, FunctionFilter, Chain, type, Sequence[Any]]  # noqa: UP007

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


@dataclasses.dataclass(frozen=True)
class FilterInfo:
    """One line of ``tileproc filters``: what a filter is called and how it is used.

    Attributes
    ----------
    name : str
        The name to use in a spec.
    summary : str
        First line of the filter's docstring.
    params : dict
        Parameter name -> default.
    halo : int or None
        Reach at the defaults; None when the filter could not be loaded.
    pointwise : bool
        True when each output pixel depends only on the same input pixel.
    source : str
        ``"built-in"`` or ``"plugin <distribution> (<module:attr>)"``.
    error : str or None
        Why a plugin could not be loaded or configured, else None.
    """

    name: str
    summary: str
    params: dict[str, Any]
    halo: int | None
    pointwise: bool
    source: str
    error: str | None = None

    @property
    def usage(self) -> str:
        """``name:param=default,...``, a spec that uses every default."""
        args = ",".join(f"{k}={_format(v)}" for k, v in self.params.items())
        return f"{self.name}:{args}" if args else self.name


def resolve(spec: Spec) -> Chain:
    """The :class:`Chain` a spec describes.

    Parameters
    ----------
    spec : str, Filter, filter function, Chain, or a list or tuple of them
        A string such as ``"blur:sigma=3,sharpen"`` (see the module docs for
        the names it may use), a filter value, a :func:`filter`-decorated
        function (meaning its defaults), a :class:`Filter` subclass, a chain,
        or a sequence mixing them, applied in order.

    Raises
    ------
    FilterError
        An unknown filter or parameter, a bad value, or an empty spec; the
        message says which and what would be accepted.

    Examples
    --------
    >>> chain = resolve("blur:sigma=2,sharpen")
    >>> [f.describe() for f in chain.filters]
    ['blur:sigma=2.0,truncate=4.0', 'sharpen:sigma=1.0,amount=1.0,threshold=0.0']
    >>> chain.halo
    12
    """
    if isinstance(spec, Chain):
        return spec
    return Chain(_flatten(spec))


def _flatten(spec: Any) -> list[AnyFilter]:
    if isinstance(spec, Chain):
        return list(spec.filters)
    if isinstance(spec, str):
        return [f for name, raw in parse(spec) for f in _configure(lookup(name), name, raw)]
    if isinstance(spec, (list, tuple)):
        return [f for item in spec for f in _flatten(item)]
    return [as_filter(spec)]


def parse(text: str) -> list[tuple[str, dict[str, str]]]:
    """Split a spec string into ``(filter name, {param: raw value})`` pairs.

    Examples
    --------
    >>> parse("blur:sigma=3,truncate=2,mypkg.mod:boxmean:radius=4,invert")
    [('blur', {'sigma': '3', 'truncate': '2'}), ('mypkg.mod:boxmean', {'radius': '4'}), ('invert', {})]
    """
    items: list[tuple[str, dict[str, str]]] = []
    for token in text.split(","):
        token = token.strip()
        if not token:
            continue
        _check_separators(text, token)
        head, eq, value = token.partition("=")
        if not eq:
            items.append((_clean_name(token), {}))
            continue
        name, colon, key = head.rpartition(":")
        key = key.strip()
        if colon:
            items.append((_clean_name(name), {}))
        elif not items:
            raise FilterError(
                f"filter spec {text!r}: parameter {token!r} comes before any filter name; "
                f"write it after its filter, e.g. 'blur:{token}'"
            )
        owner, params = items[-1]
        if not key.isidentifier():
            raise FilterError(
                f"{owner}: {key!r} is not a parameter name (in {token!r}); write parameters as name=value"
            )
        if key in params:
            raise FilterError(f"{owner}: parameter {key} is given twice ({key}={params[key]}, {token})")
        params[key] = value.strip()
    if not items:
        raise FilterError(f"empty filter spec {text!r}: give at least one filter, e.g. 'blur:sigma=2'")
    return items


_SPACED = re.compile(r"\s+")
_NAME_SPACE_PARAM = re.compile(r"[\w.]+(\s+[A-Za-z_]\w*\s*=\s*\S+)+")
_COLON_PARAM = re.compile(r":\s*([A-Za-z_]\w*)\s*=")


def _check_separators(text: str, token: str) -> None:
    """Refuse the likely slips of a spec token, naming the spec that was meant.

    ``blur sigma=3`` (a space for the colon), ``blur:sigma=3:truncate=2`` (a
    colon for the comma); ``blur:3`` (no parameter name) is caught by lookup.
    """
    plain = re.sub(r"\s*=\s*", "=", token.strip())
    if _NAME_SPACE_PARAM.fullmatch(plain):
        words = _SPACED.split(plain)
        meant = words[0] + (":" + ",".join(words[1:]) if len(words) > 1 else "")
        raise FilterError(
            f"filter spec {text!r}: spaces do not separate a filter from its parameters; did you mean {meant!r}?"
        )
    value = token.partition("=")[2]
    if _COLON_PARAM.search(value):
        name, _, first = token.partition("=")
        meant = name + "=" + _COLON_PARAM.sub(r",\1=", first)
        raise FilterError(
            f"filter spec {text!r}: parameters are separated by commas, not colons; did you mean {meant!r}?"
        )


def _clean_name(name: str) -> str:
    name = name.strip()
    return name[:-1].rstrip() if name.endswith(":") and len(name) > 1 else name


def lookup(name: str) -> Any:
    """The object a filter name refers to: a Filter class, filter function, filter or chain.

    Examples
    --------
    >>> lookup("blur").__name__
    'GaussianBlur'
    """
    if name in BUILTINS:
        return BUILTINS[name]
    if name in OPTIONAL:
        module, attr, _ = OPTIONAL[name]
        return getattr(importlib.import_module(module), attr)
    if ":" in name:
        target, _, attr = name.rpartition(":")
        if target in BUILTINS:  # "blur:3" or "blur:sigma": a parameter without its name or value
            _missing_name_or_value(name, target, attr.strip())
        if target.endswith(".py") or "/" in target or "\\" in target:
            return _from_file(name, target, attr)
        return _from_module(name, target, attr)
    plugins = _entry_points()
    if name in plugins:
        ep = plugins[name]
        try:
            return ep.load()
        except Exception as exc:
            raise FilterError(
                f"filter plugin {name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
            ) from exc
    known = sorted(set(BUILTINS) | set(OPTIONAL) | set(plugins))
    close = _close_matches(name, known, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else "."
    raise FilterError(
        f"unknown filter {name!r}{hint} Known filters: {', '.join(known)}. "
        "Custom filters are named 'package.module:name' or 'path/to/file.py:name'."
    )


def _missing_name_or_value(name: str, target: str, attr: str) -> None:
    params = BUILTINS[target].param_types()
    if attr in params:
        meant = f"{target}:{attr}={_format(params[attr][1])}"
        raise FilterError(f"filter {name!r}: parameter {attr} needs a value; did you mean {meant!r}?")
    first = next(iter(params), None)
    if first is None:
        raise FilterError(f"filter {name!r}: {target} takes no parameters; did you mean {target!r}?")
    raise FilterError(
        f"filter {name!r}: parameters are given by name; did you mean {target + ':' + first + '=' + attr!r}? "
        f"{target} takes {', '.join(params)}"
    )


def _from_module(name: str, module: str, attr: str) -> Any:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise FilterError(
            f"filter {name!r}: cannot import module {module!r} ({exc}); check the module is installed or on PYTHONPATH"
        ) from exc
    except Exception as exc:
        raise FilterError(f"filter {name!r}: importing {module!r} failed: {type(exc).__name__}: {exc}") from exc
    return _attribute(name, mod, attr)


def _from_file(name: str, path: str, attr: str) -> Any:
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise FilterError(f"filter {name!r}: no such file {path!r} (looked at {full})")
    try:
        mod = load_file_module(full)
    except FilterError:
        raise
    except Exception as exc:
        raise FilterError(f"filter {name!r}: loading {path} failed: {type(exc).__name__}: {exc}") from exc
    return _attribute(name, mod, attr)


def _attribute(name: str, mod: Any, attr: str) -> Any:
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            candidates = [k for k in vars(mod) if not k.startswith("_")]
            close = _close_matches(attr, candidates, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise FilterError(f"filter {name!r}: {mod.__name__} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    return obj


def _close_matches(word: str, candidates: Sequence[str], n: int) -> list[str]:
    import difflib  # only for a message

    return difflib.get_close_matches(word, candidates, n=n)


def _entry_points() -> dict[str, EntryPoint]:
    from importlib.metadata import entry_points  # scanning installed packages: only for a name no built-in has

    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def _configure(obj: Any, name: str, raw: dict[str, str]) -> list[AnyFilter]:
    """Filters from a looked-up object and raw string params."""
    if isinstance(obj, type) and issubclass(obj, Filter):
        label = obj.name if obj.name != Filter.name else name
        return [_construct(obj, label, _convert(label, obj.param_types(), raw, False))]
    if isinstance(obj, FilterFunction):
        params = _convert(obj.name, obj.param_types(), raw, getattr(obj, "_accepts_any", False))
        return [obj(**params)]
    if isinstance(obj, Filter):
        if not raw:
            return [obj]
        params = _convert(obj.name, type(obj).param_types(), raw, False)
        return [_construct(type(obj), obj.name, {**obj.params, **params})]
    if isinstance(obj, FunctionFilter):
        if not raw:
            return [obj]
        factory = obj.factory
        params = _convert(obj.name, factory.param_types(), raw, getattr(factory, "_accepts_any", False))
        return [factory(**{**obj.params, **params})]
    if isinstance(obj, Chain):
        if raw:
            raise FilterError(f"{name} is a chain ({obj.name}) and takes no parameters; got {', '.join(raw)}")
        return list(obj.filters)
    try:
        return [as_filter(obj)]
    except FilterError as exc:
        raise FilterError(f"filter {name!r}: {exc}") from None


def _construct(cls: type[Filter], label: str, params: dict[str, Any]) -> Filter:
    try:
        return cls(**params)
    except FilterError:
        raise
    except TypeError as exc:
        raise FilterError(f"{label}: {exc}") from None


def _convert(label: str, types: dict[str, tuple[type, Any]], raw: dict[str, str], accepts_any: bool) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, text in raw.items():
        if key in types:
            kind, default = types[key]
            params[key] = _parse_value(label, key, text, kind, default)
        elif accepts_any:
            params[key] = _guess(text)
        else:
            close = _close_matches(key, list(types), n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise FilterError(
                f"{label}: unknown parameter {key!r}{hint}; known: {', '.join(types) or 'none, it takes no parameters'}"
            )
    return params


def _parse_value(label: str, key: str, text: str, kind: type, default: Any) -> Any:
    if default is None or default is dataclasses.MISSING:
        return _guess(text)
    if kind is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise FilterError(f"{label}: {key} must be true or false (or yes/no, 1/0), got {text!r}")
    if kind is int:
        try:
            return int(text, 10)
        except ValueError:
            raise FilterError(f"{label}: {key} must be an integer, got {text!r}") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise FilterError(f"{label}: {key} must be a number, got {text!r}") from None
    if kind is str:
        return text
    try:
        return kind(text)
    except Exception:
        raise FilterError(f"{label}: {key} must be a {kind.__name__}, got {text!r}") from None


def _guess(text: str) -> Any:
    """A param value without a typed default: int, float, bool or the string itself."""
    for convert in (lambda t: int(t, 10), float):
        try:
            return convert(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    return text


def _format(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def available() -> list[FilterInfo]:
    """Every filter a spec can name without a path: built-ins, then plugins.

    A plugin that fails to load is listed with its ``error`` instead of
    failing the listing.

    Examples
    --------
    >>> info = next(i for i in available() if i.name == "blur")
    >>> info.usage, info.halo
    ('blur:sigma=1.0,truncate=4.0', 4)
    """
    infos = [_info(name, cls, "built-in") for name, cls in BUILTINS.items()]
    for name, (module, attr, extra) in OPTIONAL.items():
        cls = getattr(importlib.import_module(module), attr)
        params = {k: d for k, (_, d) in cls.param_types().items()}
        summary = (cls.__doc__ or "").strip().split("\n", 1)[0].strip().replace("``", "")
        infos.append(FilterInfo(name, summary, params, None, False, f"built-in, needs pip install 'tileproc[{extra}]'"))
    for name, ep in sorted(_entry_points().items()):
        dist = getattr(ep, "dist", None)
        source = f"plugin {dist.name if dist is not None else '?'} ({ep.value})"
        if name in BUILTINS:
            infos.append(
                FilterInfo(name, "", {}, None, False, source, error="hidden by the built-in filter of the same name")
            )
            continue
        try:
            infos.append(_info(name, ep.load(), source))
        except Exception as exc:
            infos.append(
                FilterInfo(name, "", {}, None, False, source, error=f"failed to load: {type(exc).__name__}: {exc}")
            )
    return infos


def _info(name: str, obj: Any, source: str) -> FilterInfo:
    filters = _configure(obj, name, {})
    if isinstance(obj, type) and issubclass(obj, Filter):
        params = {k: d for k, (_, d) in obj.param_types().items()}
        doc = obj.__doc__
    elif isinstance(obj, FilterFunction):
        params = {k: d for k, (_, d) in obj.param_types().items()}
        doc = obj.__doc__
    elif isinstance(obj, (Filter, FunctionFilter)):
        params = obj.params
        doc = type(obj).__doc__ if isinstance(obj, Filter) else obj.factory.__doc__
    elif isinstance(obj, Chain):
        params = {}
        doc = f"chain: {','.join(f.describe() for f in obj.filters)}"
    else:
        params = {}
        doc = getattr(obj, "__doc__", None)
    summary = (doc or "").strip().split("\n", 1)[0].strip().replace("``", "")
    return FilterInfo(
        name=name,
        summary=summary,
        params=params,
        halo=sum(f.halo for f in filters),
        pointwise=all(f.pointwise for f in filters),
        source=source,
    )
