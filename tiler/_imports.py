"""Where tileproc's packages live, and the guard that keeps its own ``filters`` package first.

Imported by :mod:`tiler` before anything else of tileproc's, so it imports
nothing but the standard library (the worker launcher re-exports it).
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["ROOT", "own_package"]

ROOT = str(Path(__file__).resolve().parent.parent)  # the folder holding tileproc's packages


def own_package(name: str) -> None:
    """Make ``import name`` give tileproc's own package beside :mod:`tiler`.

    A folder of that name without ``__init__.py`` earlier on ``sys.path`` (the
    working directory of ``python -c`` or ``python -m``) would otherwise become
    a namespace package that hides tileproc's, as it does with editable
    installs; tileproc's is then imported from its own place. A real module or
    package of that name earlier on the path is refused in one line naming it.
    """
    import importlib.util

    ours = Path(ROOT) / name
    try:
        spec = importlib.util.find_spec(name)  # the loaded module's own spec, if already imported
    except (ImportError, ValueError):
        spec = None
    places = [spec.origin] if spec is not None and spec.origin else []
    places += list(spec.submodule_search_locations or []) if spec is not None else []
    if any(Path(p).resolve().is_relative_to(ours) for p in places):
        return
    if spec is not None and spec.origin is None and name not in sys.modules:  # a namespace folder, not a module
        spec = importlib.util.spec_from_file_location(
            name, ours / "__init__.py", submodule_search_locations=[str(ours)]
        )
        assert spec is not None and spec.loader is not None  # a path ending in .py always has a source loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return
    where = places[0] if places else "nothing"
    raise ImportError(
        f"tileproc: {where} shadows tileproc's own {name!r} package (it comes first on sys.path); "
        "rename it or run from another folder"
    )
