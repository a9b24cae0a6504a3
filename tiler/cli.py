"""The ``tileproc`` command. The only module that prints.

    tileproc IN [IN ...] --filter SPEC [--filter SPEC ...] [-o OUT] [options]
    tileproc filters

``tileproc filters`` alone lists the filters; with anything after it,
``filters`` is an input like any other (a folder named ``filters``).

Exit codes: 0 success; 1 some inputs failed (each named on one line); 2 usage
error (bad option, unknown filter, bad parameter); 130 interrupted (Ctrl-C);
143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from filters import FilterError
from tiler import pipeline, staging
from tiler.engine import Engine, resolve_chain
from tiler.errors import OutputExists, TileprocError, TileprocWarning
from tiler.io import remote
from tiler.io.files import output_name
from tiler.io.images import DEFAULT_MAX_PIXELS
from tiler.pipeline import FileResult, is_supported, is_video
from tiler.scheduler import Progress, built_in

__all__ = ["main", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED", "EXIT_TERMINATED"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

EPILOG = """\
examples:
  tileproc photo.jpg --filter blur:sigma=3            writes photo.tileproc.jpg
  tileproc clip.mp4 --filter blur -o clip_blur.mp4
  tileproc photos/ --filter sharpen --filter gamma:gamma=1.2 -o out/
  tileproc in.png --filter ./my_filters.py:boxmean:radius=4
  tileproc filters                                     lists every filter
  tileproc filters -f blur -o out/                     filters the folder "filters"
                                                       ("filters" alone lists; with options it is an input)

exit codes: 0 ok, 1 some inputs failed, 2 usage error, 130 interrupted, 143 terminated
"""


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so cleanup runs as for Ctrl-C."""


def _tile_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or ROWSxCOLS, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"tile size must be N or ROWSxCOLS with sizes >= 1, got {text!r}")
    return parts[0], parts[1]


def _extension(text: str) -> str:
    from tiler.io.images import IMAGE_EXTENSIONS

    ext = "." + text.lower().lstrip(".")
    if ext not in IMAGE_EXTENSIONS:
        raise argparse.ArgumentTypeError(
            f"unknown image format {text!r}; one of {', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))}"
        )
    return ext


def _image_format(path: Path) -> str | None:
    from tiler.io.images import IMAGE_EXTENSIONS, format_of

    return format_of(path) if path.suffix.lower() in IMAGE_EXTENSIONS else None


def _quality_notes(quality: int | None, jobs: list[tuple[Path, Path | None, bool]], ext: str | None) -> list[str]:
    """Lines saying where --quality means nothing (it applies to JPEG and WebP outputs only)."""
    from tiler.io.images import quality_ignored

    if quality is None:
        return []
    targets = [ext] if ext else [str(t or output_name(s)) for s, t, folder in jobs if not folder and not is_video(s)]
    ignored = sorted({Path(t).suffix.lower() or t for t in targets if quality_ignored(t)})
    return [f"tileproc: note: --quality applies to JPEG and WebP only; ignored for {e} output" for e in ignored]


def _one_line(text: object) -> str:
    """A message on one line: control characters in file names are escaped, passwords in URLs hidden."""
    text = remote.masked(str(text))
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tileproc",
        description="Filter images, folders and videos in parallel by overlapping tiles.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="image, video or folder (recursive)")
    p.add_argument(
        "-f",
        "--filter",
        dest="filters",
        action="append",
        metavar="SPEC",
        default=[],
        help="filter spec, e.g. blur:sigma=3 or mod:func:radius=2; repeat to chain",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="output file, or folder (for a folder or several inputs); default: NAME.tileproc.EXT beside each input",
    )
    p.add_argument("-w", "--workers", type=int, metavar="N", help="worker processes (default: one per available CPU)")
    p.add_argument(
        "--tile-size", type=_tile_size, metavar="N|RxC", help="core tile size in pixels (default: full-width strips)"
    )
    p.add_argument(
        "--frames-in-flight", type=int, metavar="K", help="frames read, filtered and written at once (default 4)"
    )
    exists = p.add_mutually_exclusive_group()
    exists.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    exists.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip inputs whose output exists (outputs appear only when complete): an interrupted batch resumes",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no lines for what was written")
    p.add_argument("-v", "--verbose", action="store_true", help="show a failing filter's traceback")
    p.add_argument(
        "--max-pixels",
        type=_positive(int),
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"refuse inputs with more pixels per frame (default {DEFAULT_MAX_PIXELS})",
    )
    p.add_argument(
        "--tile-timeout",
        type=_positive(float),
        metavar="S",
        help="fail a tile that takes longer than S seconds (default: no limit)",
    )
    p.add_argument("--quality", type=int, metavar="Q", help="JPEG/WebP quality 1-100 (default: the input's)")
    p.add_argument(
        "--format",
        metavar="EXT",
        type=_extension,
        help="write images in this format (png, jpg, tif, webp, bmp, gif) instead of the input's",
    )
    p.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run on a Dask cluster: tls://HOST:8786 (with --tls-*), tcp://HOST:8786, "
        "or local[:N] for N worker processes here (pip install 'tileproc[dask]'); "
        "-w is then each Dask worker's engine size",
    )
    t = p.add_argument_group("cluster TLS (a tls:// scheduler; default: Dask's distributed.comm.tls configuration)")
    t.add_argument("--tls-ca-file", metavar="PEM", help="certificate authority that signed the scheduler's certificate")
    t.add_argument("--tls-cert", metavar="PEM", help="this client's certificate")
    t.add_argument("--tls-key", metavar="PEM", help="this client's private key (if not in --tls-cert)")
    v = p.add_argument_group("video")
    v.add_argument("--codec", help="ffmpeg encoder (default by container: libx264, libvpx-vp9, gif)")
    v.add_argument("--crf", type=float, help="constant quality (default: 18 for H.264, 31 for VP9)")
    v.add_argument("--preset", default="medium", help="encoder preset (default medium)")
    v.add_argument("--pix-fmt", help="encoder pixel format (default yuv420p, yuv420p10le for 10-bit)")
    v.add_argument(
        "--fps",
        help="write at this constant frame rate (25, 24000/1001) instead of keeping each frame at its own time",
    )
    return p


def _list_filters(out) -> int:
    from filters.registry import available

    rows = available()
    width = max(len(r.name) for r in rows)
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r.params.items()) or "-"
        halo = "?" if r.halo is None else r.halo
        extra = f"  [{r.source}]" if r.source != "built-in" else ""
        print(f"{r.name:<{width}}  halo {halo:<3}  {params}{extra}", file=out)
        print(f"{'':<{width}}  {r.summary}", file=out)
        if r.error:
            print(f"{'':<{width}}  unavailable: {r.error}", file=out)
    return EXIT_OK


class _Bars:
    """tqdm bars on stderr, off when stderr is not a terminal or with --quiet."""

    def __init__(self, quiet: bool):
        self.enabled = not quiet and sys.stderr.isatty()
        self.bar = None
        self.counts: str | None = None  # the Progress kind that advances the bar

    def open(self, total: int | None, unit: str, desc: str = "") -> None:
        self.close()
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _jobs(inputs: list[Path], output: str | None, ext: str | None) -> list[tuple[Path, Path | None, bool]]:
    """(input, output, is_folder) for each input; raises ValueError on a usage problem.

    Two inputs that would write one output are refused here, before any work.
    """
    many = len(inputs) > 1
    out = Path(output) if output else None
    to_folder = out is not None and output is not None and (many or output.endswith(os.sep) or out.is_dir())
    jobs = []
    for src in inputs:
        if src.is_dir():
            if out is not None and out.exists() and not out.is_dir():
                raise ValueError(f"{out}: output for folder {src} must be a folder")
            target = (out / src.name if many else out) if out is not None else None
            jobs.append((src, target, True))
        else:
            if out is None:
                target = output_name(src, ext=None if is_video(src) else ext)
            elif to_folder:
                target = out / src.name
                if ext and not is_video(src):
                    target = target.with_suffix(ext)
            else:
                target = out
                if ext and not is_video(src) and _image_format(target) != _image_format(Path("x" + ext)):
                    raise ValueError(
                        f"-o {target} names a {target.suffix or 'suffix-less'} file but --format asks for {ext}"
                    )
            jobs.append((src, target, False))
    seen: dict[str, Path] = {}
    for src, target, _ in jobs:
        if target is None:
            continue
        key = os.path.normcase(os.path.abspath(target))
        if key in seen:
            raise ValueError(
                f"{src} and {seen[key]} would both be written to {target}; give them different names or outputs"
            )
        seen[key] = src
    return jobs


def _url_jobs(inputs: list[str], output: str | None, ext: str | None) -> list[tuple[Any, Any, bool]]:
    """(input, output, is_folder) for each input when an input or the output is a URL (a prefix is a folder)."""
    many = len(inputs) > 1
    out_is_url = remote.is_url(output)
    to_folder = output is not None and (
        many or output.endswith(("/", os.sep)) or (remote.is_folder(output) if out_is_url else Path(output).is_dir())
    )
    jobs = []
    for text in inputs:
        src = _Url(text) if remote.is_url(text) else Path(text)
        is_folder = remote.is_folder(src) if isinstance(src, str) else src.is_dir()
        name = src.rstrip("/").rpartition("/")[2] if isinstance(src, str) else src.name
        if output is None:
            target = None
        elif to_folder or (is_folder and not many):
            base = (
                output if is_folder and not many else (remote.join(output, name) if out_is_url else Path(output) / name)
            )
            target = base if is_folder or not ext or pipeline.is_video(Path(name)) else _with_ext(base, ext)
        else:
            target = output if out_is_url else Path(output)
        jobs.append((src, target, is_folder))
    targets = [str(t) for _, t, _ in jobs if t is not None]
    if len(set(targets)) != len(targets):
        raise ValueError("two inputs would be written to one output; give them different names or outputs")
    return jobs


class _Url(str):
    """A URL, with the ``name`` the progress bar shows, as a path has."""

    @property
    def name(self) -> str:
        return self.rstrip("/").rpartition("/")[2]


def _with_ext(target, ext: str):
    if isinstance(target, Path):
        return target.with_suffix(ext)
    head, dot, _ = target.rpartition(".")
    return f"{head}{ext}" if dot and "/" not in target[len(head) :] else target + ext


def _run_url(engine, src, dst, chain, report: _Report, options, video_options, is_folder: bool, ext) -> None:
    """One job whose input or output is a URL: on the cluster's workers, or staged through this machine's engine."""
    runner = engine if isinstance(engine, _OnCluster) else _Staged(engine)
    if is_folder:
        _run_folder(runner, src, dst, chain, report, options, video_options, ext)
        return
    if not pipeline.is_supported(Path(str(src).rpartition("/")[2])):
        try:
            missing = remote.absent(src) if remote.is_url(src) else None
        except TileprocError as exc:
            report.failed(exc)
            return
        report.failed(f"{src}: {missing or 'not a supported image or video (by its extension)'}")
        return
    start = time.monotonic()
    try:
        out = runner.process_file(src, dst, chain, **options, **video_options)
    except TileprocError as exc:
        report.failed(exc, say_skip=True)
        return
    report.written(src, out if out is not None else dst, time.monotonic() - start)


class _Staged:
    """The Engine methods the command uses, for URLs: each file staged through this machine's engine."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def process_file(self, src, dst, chain, **options):
        return staging.run_file(self._engine, src, dst, chain, **options)

    def process_folder(self, src, dst, chain, **options):
        return staging.process_folder(self._engine, src, dst, chain, **options)


class _InputNotes(logging.Handler):
    """Prints the lines tileproc logs about its inputs (``tiler.io``: what it left out or repaired)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"tileproc: warning: {_one_line(record.getMessage())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    notes, handler = logging.getLogger("tiler.io"), _InputNotes(logging.WARNING)
    notes.addHandler(handler)  # else logging's last-resort handler would print them bare
    try:
        with warnings.catch_warnings():  # this process is the command: its warnings print as one line each
            warnings.showwarning = _show_warning
            return _main(argv)
    except BrokenPipeError:  # `tileproc filters | head`: the reader is gone, which is no error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot raise again
        return 128 + signal.SIGPIPE
    finally:
        notes.removeHandler(handler)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, TileprocWarning):
        print(f"tileproc: warning: {_one_line(message)}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["filters"]:  # alone; with options after it, "filters" is an input (a folder of that name)
        if os.path.exists("filters"):
            print(
                "tileproc: listing filters; to process the folder 'filters', give a filter: tileproc filters -f SPEC",
                file=sys.stderr,
            )
        return _list_filters(sys.stdout)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if not args.filters:
        parser.print_usage(sys.stderr)
        print("tileproc: error: give at least one --filter (see 'tileproc filters')", file=sys.stderr)
        return EXIT_USAGE
    try:
        chain = resolve_chain(",".join(args.filters))
        if args.workers != 0 and not built_in(chain):  # built-ins travel by name; -w 0: nothing travels
            chain.check_picklable()
        if staging.involved(*args.inputs, args.output):
            jobs = _url_jobs(args.inputs, args.output, args.format)
        else:
            jobs = _jobs([Path(i) for i in args.inputs], args.output, args.format)
        if args.workers is not None and args.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {args.workers}")
        if args.workers == 0 and args.tile_timeout is not None and not args.cluster:
            raise ValueError(
                "--tile-timeout needs workers: with -w 0 filters run in this process, where a tile cannot be stopped"
            )
        if args.frames_in_flight is not None and args.frames_in_flight < 1:
            raise ValueError(f"--frames-in-flight must be >= 1, got {args.frames_in_flight}")
        if args.quality is not None and not 1 <= args.quality <= 100:
            raise ValueError(f"--quality must be 1..100, got {args.quality}")
        if args.fps is not None:
            if args.cluster:
                raise ValueError("--fps does not combine with --cluster (a cluster keeps each frame's time)")
            try:
                rate = Fraction(args.fps)
            except (ValueError, ZeroDivisionError):
                rate = Fraction(0)
            if rate <= 0:
                raise ValueError(f"--fps must be a positive number or fraction such as 24000/1001, got {args.fps}")
        if not args.cluster and (args.tls_ca_file or args.tls_cert or args.tls_key):
            raise ValueError("--tls-ca-file, --tls-cert and --tls-key go with --cluster")
    except (FilterError, ValueError) as exc:
        print(f"tileproc: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    for note in _quality_notes(args.quality, jobs, args.format):
        print(_one_line(note), file=sys.stderr)

    if args.output and not remote.is_url(args.output) and (len(args.inputs) > 1 or args.output.endswith(os.sep)):
        try:
            Path(args.output).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(
                f"tileproc: error: {_one_line(args.output)}: cannot create the output folder ({exc.strerror or exc})",
                file=sys.stderr,
            )
            return EXIT_FAILED
    bars = _Bars(args.quiet)
    report = _Report(bars, quiet=args.quiet, verbose=args.verbose, skip_existing=args.skip_existing)
    try:
        on_cluster = _OnCluster(args, bars) if args.cluster else None
    except (TileprocError, ValueError) as exc:
        from tiler.cluster import DaskMissing

        print(f"tileproc: error: {_one_line(exc)}", file=sys.stderr)
        usage = isinstance(exc, (ValueError, DaskMissing))  # a bad address, or the extra not installed
        return EXIT_USAGE if usage else EXIT_FAILED  # an unreachable scheduler: the job failed
    previous = signal.getsignal(signal.SIGTERM)

    def terminate(signum, frame):
        raise _Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        with on_cluster or Engine(
            args.workers,
            tile_size=args.tile_size,
            frames_in_flight=args.frames_in_flight,
            tile_timeout=args.tile_timeout,
            progress=lambda e: _on_progress(bars, e),
        ) as engine:
            options = dict(overwrite=args.overwrite, max_pixels=args.max_pixels, quality=args.quality)
            video_options = dict(codec=args.codec, crf=args.crf, preset=args.preset, pix_fmt=args.pix_fmt)
            if args.fps is not None:
                video_options["fps"] = args.fps
            if on_cluster is None:
                video_options["on_note"] = lambda line: bars.write(f"tileproc: {_one_line(line)}")
            for src, dst, is_folder in jobs:
                if staging.involved(src, dst):
                    _run_url(engine, src, dst, chain, report, options, video_options, is_folder, args.format)
                elif is_folder:
                    _run_folder(engine, src, dst, chain, report, options, video_options, args.format)
                else:
                    _run_file(engine, src, dst, chain, report, options, video_options)
    except KeyboardInterrupt:
        bars.close()
        print("tileproc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        bars.close()
        print("tileproc: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)
        bars.close()
    if len(jobs) > 1:
        report.summary("all inputs", report.total)
    return EXIT_FAILED if report.total[2] else EXIT_OK


class _Report:
    """What the command did, on stderr: a line per output or folder, errors, tracebacks with -v."""

    def __init__(self, bars: _Bars, *, quiet: bool, verbose: bool, skip_existing: bool):
        self.bars, self.quiet, self.verbose, self.skip_existing = bars, quiet, verbose, skip_existing
        self.total = [0, 0, 0]  # written, skipped, failed
        self.started = time.monotonic()

    def written(self, src: Path | str, dst: Path | str | None, seconds: float, *, line: bool = True) -> None:
        self.total[0] += 1
        if line and not self.quiet:
            self.bars.write(f"tileproc: {_one_line(src)} -> {_one_line(dst)} ({seconds:.1f} s)")

    def failed(self, exc: BaseException | str, *, say_skip: bool = False) -> str:
        """Count a failure (or a skip, for an existing output with --skip-existing); returns which."""
        if self.skip_existing and isinstance(exc, OutputExists):
            self.total[1] += 1
            if say_skip and not self.quiet:
                self.bars.write(f"tileproc: {_one_line(exc)}, skipped")
            return "skipped"
        self.total[2] += 1
        _fail_line(self.bars, exc)
        remote = getattr(exc, "remote_traceback", "") or getattr(
            getattr(exc, "__cause__", None), "remote_traceback", ""
        )
        if self.verbose and remote:
            self.bars.write(remote.rstrip())
        return "failed"

    def summary(self, label: str, counts: list[int], seconds: float | None = None) -> None:
        if self.quiet:
            return
        seconds = time.monotonic() - self.started if seconds is None else seconds
        written, skipped, failed = counts
        self.bars.write(
            f"tileproc: {_one_line(label)}: {written} written, {skipped} skipped, {failed} failed in {seconds:.1f} s"
        )


def _on_progress(bars: _Bars, event: Progress) -> None:
    """Engine progress -> the bar: tiles of one image, or frames of a video."""
    if bars.bar is None or event.kind != bars.counts:
        return
    if bars.bar.total is None and event.kind == "tiles" and event.frame.tiles:
        bars.bar.total = event.frame.tiles
        bars.bar.refresh()
    bars.advance(event.done)


def _fail_line(bars: _Bars, exc: BaseException | str) -> None:
    bars.write(f"tileproc: error: {_one_line(exc)}")


def _run_file(engine, src: Path, dst: Path | None, chain, report: _Report, options, video_options) -> None:
    bars = report.bars
    if not src.exists() and not src.is_symlink():
        report.failed(f"{src}: no such file")
        return
    if not is_supported(src):
        report.failed(f"{src}: not a supported image or video (by its extension)")
        return
    if report.skip_existing and dst is not None and dst.exists():
        report.failed(OutputExists(f"{dst}: output exists"), say_skip=True)
        return
    start = time.monotonic()
    try:
        if is_video(src):

            def started(info):
                bars.counts = "frame"
                bars.open(info.frame_count, "frame", src.name)

            out = engine.process_video(src, dst, chain, on_start=started, **options_for_video(options), **video_options)
        else:
            bars.counts = "tiles"
            bars.open(None, "tile", src.name)
            out = engine.process_file(src, dst, chain, **options)
    except TileprocError as exc:
        bars.close()
        report.failed(exc)
        return
    bars.close()
    report.written(src, out or dst, time.monotonic() - start)


def options_for_video(options: dict) -> dict:
    return {k: v for k, v in options.items() if k != "quality"}


def _run_folder(
    engine, src: Path, dst: Path | None, chain, report: _Report, options, video_options, ext: str | None
) -> None:
    bars = report.bars
    counts = [0, 0, 0]  # written, skipped, failed
    bars.counts = None  # the bar counts files, as they finish
    start = time.monotonic()

    def planned(n: int) -> None:
        bars.open(n, "file", Path(str(src)).name)  # a URL's last part too

    def done(result: FileResult) -> None:
        bars.advance()
        if result.ok:
            counts[0] += 1
            report.written(result.src, result.dst, 0.0, line=False)
        else:
            assert result.error is not None  # not ok: it has an error
            counts[1 if report.failed(result.error) == "skipped" else 2] += 1

    try:
        engine.process_folder(src, dst, chain, on_result=done, on_plan=planned, ext=ext, **options, **video_options)
    except TileprocError as exc:
        counts[1 if report.failed(exc) == "skipped" else 2] += 1
    bars.close()
    report.summary(str(src), counts, time.monotonic() - start)


def _security(args):
    """A ``distributed.Security`` from the --tls-* options; None without them (Dask's configuration applies)."""
    files = {"--tls-ca-file": args.tls_ca_file, "--tls-cert": args.tls_cert, "--tls-key": args.tls_key}
    given = {k: v for k, v in files.items() if v}
    if not given:
        return None
    if args.tls_key and not args.tls_cert:
        raise ValueError("--tls-key needs --tls-cert")
    for option, path in given.items():
        if not os.path.isfile(path):
            raise ValueError(f"{option} {path}: no such file")
    from tiler.cluster import tls

    return tls(args.tls_ca_file, args.tls_cert, args.tls_key)


class _OnCluster:
    """The Engine methods the command uses, run on a Dask cluster instead (see tiler.cluster)."""

    def __init__(self, args, bars: _Bars):
        from tiler import cluster

        if args.workers == 0:
            raise ValueError("--workers must be >= 1 with --cluster (each Dask worker's engine size)")
        self._cluster, self._bars = cluster, bars
        self._options = dict(
            workers=args.workers,
            tile_size=args.tile_size,
            frames_in_flight=args.frames_in_flight,
            tile_timeout=args.tile_timeout,
        )
        self.client = cluster.connect(args.cluster, security=_security(args))

    def __enter__(self) -> _OnCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()  # and the cluster, for local[:N]

    def process_file(self, src, dst, chain, **options):
        return self._cluster.process_file(self.client, src, dst, chain, **self._options, **options)

    def process_video(self, src, dst, chain, **options):
        return self._cluster.process_video(
            self.client, src, dst, chain, on_frames=self._bars.advance, **self._options, **options
        )

    def process_folder(self, src, dst, chain, **options):
        self.frames = 0
        return self._cluster.process_folder(
            self.client, src, dst, chain, on_frames=self._count_frames, **self._options, **options
        )

    def _count_frames(self, n: int) -> None:
        """Frames done across the workers (Dask's event thread): shown beside the bar's file count."""
        self.frames += n
        bar = self._bars.bar
        if bar is not None:
            bar.set_postfix_str(f"{self.frames} frames", refresh=False)
