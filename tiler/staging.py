"""Jobs whose inputs or outputs are URLs (``s3://``, ``gs://``, ``az://``, ``https://``...).

Each file is staged into a local folder of the process that filters it, run
through the local pipeline as any file, and its output uploaded when
complete (see :mod:`tiler.io.remote` for the transfer and its promises). A
folder is a prefix: every supported object under it is a file of the job, and
the outputs mirror the tree under the output prefix (or local folder).

The same functions run on this machine and inside each Dask worker, so a
video is never carried through the driver of a cluster job: the worker that
filters it fetches it and uploads its output.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from tiler import pipeline
from tiler.errors import OutputError, TileprocError
from tiler.io import remote
from tiler.io.files import output_name
from tiler.pipeline import FileResult, Report

__all__ = [
    "involved",
    "default_output",
    "named",
    "run_file",
    "plan_folder",
    "join_output",
    "process_folder",
    "existing",
]


def involved(*paths: Any) -> bool:
    """True when any of ``paths`` is a URL (not a local path or ``file://``)."""
    return any(remote.is_url(p) for p in paths)


def default_output(src: str, *, ext: str | None = None) -> str:
    """``s3://b/photo.jpg`` -> ``s3://b/photo.tileproc.jpg``, as :func:`tiler.io.files.output_name` for paths."""
    head, _, name = src.rstrip("/").rpartition("/")
    return f"{head}/{output_name(name, ext=ext).name}"


def named(exc: TileprocError, local: Path | None, url: str) -> TileprocError:
    """``exc`` with the staged local path ``local`` in its message replaced by the URL it stands for (password hidden)."""
    if local is not None and exc.args and isinstance(exc.args[0], str):
        exc.args = (remote.masked(exc.args[0].replace(str(local), url)), *exc.args[1:])
    return exc


def run_file(
    engine,
    src: Any,
    dst: Any,
    chain: Any,
    *,
    storage_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    sweep: bool = True,
    **options: Any,
) -> Any:
    """:func:`tiler.pipeline.process_file`, where ``src`` and ``dst`` may be URLs; returns ``dst``.

    A remote input is staged into a local workspace; a remote output is
    written there and uploaded when complete. An existing remote output is
    refused (without ``overwrite``) before the input is fetched.

    Examples
    --------
    >>> with Engine(2) as engine:                                                  # doctest: +SKIP
    ...     run_file(engine, "s3://bucket/in/a.png", "s3://bucket/out/a.png", "blur")
    's3://bucket/out/a.png'
    """
    if not involved(src, dst):
        return pipeline.process_file(engine, src, dst, chain, overwrite=overwrite, sweep=sweep, **options)
    src = str(src) if remote.is_url(src) else Path(src)
    if dst is None:
        dst = default_output(src) if isinstance(src, str) else output_name(src)
    dst = str(dst) if remote.is_url(dst) else Path(dst)
    if isinstance(dst, str) and dst == src:
        raise OutputError(f"{dst}: output is the input file {src}; choose another output name")
    if isinstance(dst, str):
        remote.check_output(dst, storage_options, overwrite=overwrite)
    local_src = local_dst = None
    with remote.workspace() as work:
        try:
            if isinstance(src, str):
                local_src = remote.stage_input(src, work / "in", storage_options)
            if isinstance(dst, str):
                local_dst = work / "out" / (PurePosixPath(dst).name or "output")
                local_dst.parent.mkdir()
                pipeline.process_file(
                    engine, local_src or src, local_dst, chain, overwrite=True, sweep=False, **options
                )
                remote.upload(local_dst, dst, storage_options, overwrite=overwrite)
            else:
                pipeline.process_file(engine, local_src, dst, chain, overwrite=overwrite, sweep=sweep, **options)
        except TileprocError as exc:
            raise named(named(exc, local_src, str(src)), local_dst, str(dst)) from None
    return dst


def plan_folder(
    src: Any,
    dst: Any,
    *,
    ext: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[list[tuple[Any, Any]], list[FileResult]]:
    """Pair every supported file under the folder ``src`` with its output, as :func:`tiler.pipeline.plan_folder`.

    ``src`` and ``dst`` may be URLs (a prefix is a folder) or local paths;
    local output folders are created. Hidden files and folders are skipped,
    and with no ``dst`` existing ``*.tileproc.*`` files are not inputs. Two
    inputs with one output name are both refused. Returns (pairs, problems).
    """
    pairs: list[tuple[Any, Any]]
    problems: list[FileResult]
    if not remote.is_url(src):  # a local folder into an output URL: local planning, outputs mapped to URLs
        root = Path(src)
        hidden = root / ".tileproc-output"  # a hidden stand-in output folder, never scanned
        pairs, problems = pipeline.plan_folder(root, hidden, ext=ext)
        return [(s, remote.join(str(dst), d.relative_to(hidden).as_posix())) for s, d in pairs], problems
    src = str(src)
    pairs = []
    for rel in remote.list_folder(src, storage_options):
        parts = rel.split("/")
        if any(p.startswith(".") for p in parts) or not pipeline.is_supported(Path(parts[-1])):
            continue
        if dst is None and ".tileproc." in parts[-1]:
            continue
        s = remote.join(src, rel)
        d: str | Path
        if dst is None:
            d = default_output(s, ext=ext)
        elif remote.is_url(dst):
            d = join_output(str(dst), rel, ext)
        else:
            d = Path(dst) / rel
            d = d.with_suffix(ext) if ext else d
        pairs.append((s, d))
    problems = []
    by_output: dict[str, list[Any]] = {}
    for s, d in pairs:
        by_output.setdefault(str(d), []).append(s)
    kept = []
    for s, d in pairs:
        clash = by_output[str(d)]
        if len(clash) > 1:
            other = next(c for c in clash if c != s)
            message = f"{s}: its output {d} would also be the output of {other}; rename one of them"
            problems.append(FileResult(s, None, OutputError(message)))
            continue
        if isinstance(d, Path):
            try:
                d.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                problems.append(
                    FileResult(s, None, OutputError(f"{d}: cannot create the output folder ({exc.strerror or exc})"))
                )
                continue
        kept.append((s, d))
    return kept, problems


def join_output(folder: str, relative: str, ext: str | None) -> str:
    """The output URL for ``relative`` under the output folder URL ``folder`` (with extension ``ext``)."""
    if ext:
        relative = str(PurePosixPath(relative).with_suffix(ext))
    return remote.join(folder, relative)


def existing(outputs: list[Any], storage_options: Mapping[str, Any] | None = None) -> set[str]:
    """Which of ``outputs`` (URLs or paths) exist now, as strings: one listing per folder."""
    by_folder: dict[str, list[str]] = {}
    for d in outputs:
        text = str(d)
        by_folder.setdefault(text.rpartition("/")[0], []).append(text)
    found: set[str] = set()
    for folder, wanted in by_folder.items():
        try:
            if remote.is_url(folder):
                fs, path = remote.filesystem(folder, storage_options)
                names = {PurePosixPath(p).name for p in fs.ls(path, detail=False)}
            else:
                names = set(os.listdir(folder))
        except (OSError, TileprocError):
            continue
        found.update(w for w in wanted if w.rpartition("/")[2] in names)
    return found


def process_folder(
    engine,
    src: Any,
    dst: Any,
    chain: Any,
    *,
    storage_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    skip_existing: bool = False,
    on_result: Callable[[FileResult], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
    ext: str | None = None,
    **options: Any,
) -> Report:
    """:func:`tiler.pipeline.process_folder` for a folder or prefix URL and/or an output URL, on ``engine``.

    ``skip_existing``: an output that exists is complete (outputs appear only
    whole), so its input is not fetched again and counts as done: a rerun
    resumes an interrupted batch.

    Examples
    --------
    >>> with Engine(2) as engine:                                                        # doctest: +SKIP
    ...     report = process_folder(engine, "s3://bucket/photos", "s3://bucket/out", "blur")
    """
    report = Report()

    def record(result: FileResult) -> None:
        report.results.append(result)
        if on_result is not None:
            on_result(result)

    pairs, problems = plan_folder(src, dst, ext=ext, storage_options=storage_options)
    if on_plan is not None:
        on_plan(len(pairs) + len(problems))
    for problem in problems:
        record(problem)
    done = existing([d for _, d in pairs], storage_options) if skip_existing and not overwrite else set()
    for s, d in pairs:
        if str(d) in done:
            record(FileResult(s, d, None))
            continue
        try:
            run_file(engine, s, d, chain, storage_options=storage_options, overwrite=overwrite, **options)
        except TileprocError as exc:
            record(FileResult(s, None, exc))
        else:
            record(FileResult(s, d, None))
    return report
