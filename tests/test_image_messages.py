"""Libraries' complaints never reach the terminal raw, and Pillow's process-wide settings are never touched."""

from __future__ import annotations

import logging
import struct
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from tiler.errors import InputError
from tiler.io.images import probe_image, read_image, write_image
from tiler.io.png import PNG_SIGNATURE, png_chunk, png_chunks

H, W = 12, 17


def _damaged_exif_jpeg(path: Path) -> Path:
    ex = Image.Exif()
    ex[0x010F] = "TestCam"
    ex[0x8769] = {0x9003: "2024:01:02 03:04:05"}
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path, exif=ex.tobytes()[:-10])  # tag data cut short
    return path


def _patch_entry(path: Path, tag: int, fmt: str, offset: int, *values) -> None:
    """Overwrite bytes of ``tag``'s entry in the first IFD of a little-endian TIFF (``fmt`` at ``offset`` in it)."""
    data = bytearray(path.read_bytes())
    ifd0 = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd0)[0]):
        at = ifd0 + 2 + 12 * k
        if struct.unpack_from("<H", data, at)[0] == tag:
            struct.pack_into(fmt, data, at + offset, *values)
    path.write_bytes(bytes(data))


def _damaged_tag_tiff(path: Path) -> np.ndarray:
    a = np.arange(H * W, dtype=np.uint16).reshape(H, W)
    tifffile.imwrite(path, a, metadata=None, extratags=[(305, 2, 0, "x" * 64, True)])
    _patch_entry(path, 305, "<I", 8, 0x7FFFFF00)  # Software's text now lies past the end
    return a


def test_tiff_width_of_a_signed_type_is_refused_in_one_line(tmp_path):
    src = tmp_path / "neg.tif"
    tifffile.imwrite(src, np.zeros((H, W), np.uint8), metadata=None)
    _patch_entry(src, 256, "<HI4s", 2, 6, 1, b"\x8c\x00\x00\x00")  # ImageWidth as SBYTE 0x8c: -116
    with pytest.raises(InputError) as caught:
        probe_image(src)
    assert str(caught.value) == f"{src}: truncated or corrupt image (size -116x{H})"


def test_damaged_exif_is_one_logged_line_naming_the_file(tmp_path, capfd, caplog):
    src = _damaged_exif_jpeg(tmp_path / "d.jpg")
    with caplog.at_level(logging.WARNING, logger="tiler.io"):
        info = probe_image(src)
        write_image(read_image(info), tmp_path / "o.png", info)
    assert info.exif is None
    lines = [r.getMessage() for r in caplog.records if r.name == "tiler.io"]
    assert len(lines) == 1 and lines[0].startswith(f"{src}: damaged EXIF left out (") and "\n" not in lines[0]
    out, err = capfd.readouterr()
    assert "Warning" not in err and "Truncated" not in err and out == ""


def test_damaged_tiff_tag_is_one_logged_line_and_pixels_are_read(tmp_path, capfd, caplog):
    src = tmp_path / "t.tif"
    a = _damaged_tag_tiff(src)
    with caplog.at_level(logging.WARNING, logger="tiler.io"):
        info = probe_image(src)
        got = read_image(info)
    np.testing.assert_array_equal(got, a)
    lines = [r.getMessage() for r in caplog.records if r.name == "tiler.io"]
    assert lines and all(line.startswith(f"{src}: damaged TIFF") for line in lines)
    assert capfd.readouterr().err == ""


def test_tifffile_messages_of_other_threads_pass_through(tmp_path, caplog):
    """The per-call capture holds back only the calling thread's records: the host's own logging is untouched."""
    from tiler.io._image import tifffile_messages

    seen = []
    with caplog.at_level(logging.WARNING, logger="tifffile"), tifffile_messages() as mine:
        logging.getLogger("tifffile").warning("mine")
        t = threading.Thread(target=lambda: logging.getLogger("tifffile").warning("host"))
        t.start()
        t.join()
        seen = [r.getMessage() for r in caplog.records if r.name == "tifffile"]
    assert mine.messages == ["mine"] and seen == ["host"]


def test_pillow_settings_never_change_even_for_a_moment(tmp_path, monkeypatch):
    """A host thread watching Pillow's limits sees them constant while images are probed, read and written;
    a host that lowered MAX_IMAGE_PIXELS still gets tileproc's own --max-pixels (its setting is not used)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # the host's choice, far below these images
    files = []
    for k, ext in enumerate((".png", ".jpg", ".gif", ".bmp", ".tif")):
        path = tmp_path / f"i{k}{ext}"
        Image.fromarray(np.full((H, W, 3), 10 * k, np.uint8)).save(path)
        files.append(path)
    seen: set[tuple[object, object]] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.add((Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(3):
            for path in files:
                info = probe_image(path)
                write_image(read_image(info), tmp_path / f"o{path.suffix}", info, overwrite=True)
    finally:
        stop.set()
        watcher.join()
    assert seen == {(50, False)}


def test_a_host_limit_that_pillows_own_decoder_applies_is_named(tmp_path, monkeypatch):
    """Pillow's WebP opener (in recent Pillow) checks Pillow's limit itself: then the file is refused on one
    line naming the setting; either way the setting stays as the host made it."""
    path = tmp_path / "w.webp"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    try:
        info = probe_image(path)
    except InputError as exc:
        expected = (
            f"{path}: larger than this process's PIL.Image.MAX_IMAGE_PIXELS (50); tileproc does not change that setting"
        )
        assert str(exc) == expected
    else:
        assert read_image(info).shape == (H, W, 3)
    assert Image.MAX_IMAGE_PIXELS == 50


def test_truncation_is_refused_even_when_the_host_lets_pillow_accept_it(tmp_path, monkeypatch):
    """A host may set Pillow's LOAD_TRUNCATED_IMAGES; tileproc still refuses truncated files (and leaves the switch)."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    a = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for ext in (".png", ".jpg", ".bmp"):
        good = tmp_path / f"good{ext}"
        Image.fromarray(a).save(good)
        np.testing.assert_array_equal(read_image(probe_image(good)).shape, (64, 64, 3))
        cut = tmp_path / f"cut{ext}"
        cut.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
        try:
            read_image(probe_image(cut))
        except InputError as exc:
            assert str(exc).startswith(f"{cut}: truncated or corrupt image")
        else:
            raise AssertionError(f"{cut.name} was read")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_no_library_warning_is_raised_on_damaged_metadata(tmp_path):
    """Checked with the test's own warnings recorder: tileproc leaves damaged EXIF out before Pillow would warn."""
    import warnings

    jpg = _damaged_exif_jpeg(tmp_path / "d.jpg")
    tif = tmp_path / "t.tif"
    _damaged_tag_tiff(tif)
    ex = Image.Exif()
    ex[0x010F] = "Cam"
    blob = bytearray(ex.tobytes())
    struct.pack_into(">I" if blob[6:8] == b"MM" else "<I", blob, 6 + 4, 4000)  # IFD0 points past the end
    png = tmp_path / "p.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(png, exif=bytes(blob))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in (jpg, tif, png):
            info = probe_image(path)
            write_image(read_image(info), tmp_path / f"o-{path.stem}.jpg", info)
    assert [str(w.message) for w in caught] == []


def test_multi_page_tiff_says_which_pages_are_left_out(tmp_path, caplog):
    pages = np.arange(3 * H * W, dtype=np.uint16).reshape(3, H, W)
    src = tmp_path / "pages.tif"
    tifffile.imwrite(src, pages, photometric="minisblack")  # three gray pages
    with caplog.at_level(logging.WARNING, logger="tiler.io"):
        info = probe_image(src)
        got = read_image(info)
    np.testing.assert_array_equal(got, pages[0])
    lines = [r.getMessage() for r in caplog.records if r.name == "tiler.io"]
    assert lines == [f"{src}: a multi-page TIFF: only page 1 of 3 is read (pages 2 to 3 are left out)"]


def test_reduced_resolution_pages_are_not_counted_as_lost(tmp_path, caplog):
    a = np.arange(H * W * 4, dtype=np.uint8).reshape(2 * H, 2 * W)
    src = tmp_path / "preview.tif"
    with tifffile.TiffWriter(src) as tif:
        tif.write(a)
        tif.write(a[::2, ::2], subfiletype=1)  # a reduced-resolution copy of the image
    with caplog.at_level(logging.WARNING, logger="tiler.io"):
        info = probe_image(src)
    assert info.shape[:2] == a.shape
    assert [r.getMessage() for r in caplog.records if r.name == "tiler.io"] == []


def test_sixteen_bit_png_with_a_damaged_profile_reads_quietly(tmp_path, capfd):
    """The 16-bit reader (OpenCV's libpng) would print "libpng warning: iCCP: too short" on stderr."""
    a = np.arange(H * W * 3, dtype=np.uint16).reshape(H, W, 3) * 97
    ok, buf = cv2.imencode(".png", a[:, :, ::-1])  # OpenCV stores BGR
    assert ok
    data = PNG_SIGNATURE
    for kind, payload in png_chunks(bytes(buf)):
        data += png_chunk(kind, payload)
        if kind == b"IHDR":
            data += png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(b"too short"))
    src = tmp_path / "bogus-icc.png"
    src.write_bytes(data)
    capfd.readouterr()
    info = probe_image(src)
    assert (info.dtype, info.channels) == (np.uint16, 3)
    np.testing.assert_array_equal(read_image(info), a)
    assert capfd.readouterr() == ("", "")


def test_command_line_prints_input_notes_as_its_own_warnings(tmp_path, capfd):
    from tiler.cli import main

    damaged = tmp_path / "t_badtag.tif"
    _damaged_tag_tiff(damaged)
    pages = tmp_path / "pages.tif"
    tifffile.imwrite(pages, np.zeros((2, H, W), np.uint8), photometric="minisblack")
    capfd.readouterr()
    for src in (damaged, pages):
        assert main([str(src), "-f", "invert", "-o", str(tmp_path / f"o-{src.name}"), "-w", "0", "-q"]) == 0
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert lines and all(line.startswith("tileproc: warning: ") for line in lines), err
    assert any(line.startswith(f"tileproc: warning: {damaged}: damaged TIFF tags (") for line in lines)
    assert lines[-1] == f"tileproc: warning: {pages}: a multi-page TIFF: only page 1 of 2 is read (page 2 is left out)"


def _exif_block(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian EXIF block: one IFD of (tag, type, count, 4 value bytes), no next IFD."""
    body = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI4s", *e) for e in entries)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + body + struct.pack("<I", 0)


@pytest.mark.parametrize(
    "pointer",
    [
        (0x8769, 3, 1, struct.pack("<HH", 60000, 0)),  # the EXIF IFD pointer as a SHORT, into nowhere
        (0x8769, 9, 1, struct.pack("<i", 40)),  # as a SLONG, to an IFD cut short
    ],
)
def test_an_exif_pointer_stored_an_unusual_way_is_still_checked(tmp_path, capfd, caplog, pointer):
    """A camera's EXIF (single LONG pointers) is checked by the structure walk alone; any other
    pointer is read by tifffile too, so damage behind it never reaches Pillow's warnings."""
    src = tmp_path / "p.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(
        src, exif=_exif_block([(0x112, 3, 1, b"\x06\x00\x00\x00"), pointer])
    )
    with caplog.at_level(logging.WARNING, logger="tiler.io"):
        info = probe_image(src)
        write_image(read_image(info), tmp_path / "o.png", info)
    assert info.exif is None
    lines = [r.getMessage() for r in caplog.records if r.name == "tiler.io"]
    assert len(lines) == 1 and lines[0].startswith(f"{src}: damaged EXIF left out (")
    assert "Warning" not in capfd.readouterr().err
