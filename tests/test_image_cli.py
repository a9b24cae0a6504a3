"""The image options of the command line: --format against -o, --quality where it means nothing."""

import numpy as np
from PIL import Image

from tiler.cli import main


def _png(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(path)
    return path


def test_format_contradicting_the_output_name_is_a_usage_error(tmp_path, capsys):
    src = _png(tmp_path / "a.png")
    assert main([str(src), "-f", "invert", "-o", str(tmp_path / "x.jpg"), "--format", "png", "-q"]) == 2
    err = capsys.readouterr().err
    assert "-o" in err and "x.jpg" in err and "--format" in err and ".png" in err and "\n" == err[-1]
    assert not (tmp_path / "x.jpg").exists()
    # agreeing spellings are no contradiction
    assert main([str(src), "-f", "invert", "-o", str(tmp_path / "x.jpeg"), "--format", "jpg", "-q"]) == 0
    with Image.open(tmp_path / "x.jpeg") as im:
        assert im.format == "JPEG"


def test_quality_on_png_says_it_is_ignored(tmp_path, capsys):
    src = _png(tmp_path / "a.png")
    assert main([str(src), "-f", "invert", "-o", str(tmp_path / "o.png"), "--quality", "50", "-q"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--quality" in err and "ignored for .png" in err
    assert main([str(src), "-f", "invert", "-o", str(tmp_path / "o.jpg"), "--quality", "50", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_a_symbolic_link_loop_in_a_folder_is_named_as_one(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png")
    (src / "loop.png").symlink_to(src / "back.png")
    (src / "back.png").symlink_to(src / "loop.png")
    (src / "dangling.png").symlink_to(tmp_path / "nope.png")
    assert main([str(src), "-f", "invert", "-o", str(tmp_path / "out"), "-w", "0", "-q"]) == 1
    err = capsys.readouterr().err
    assert f"{src / 'loop.png'}: a symbolic link loop" in err and f"{src / 'back.png'}: a symbolic link loop" in err
    assert f"{src / 'dangling.png'}: a broken symbolic link" in err
    assert (tmp_path / "out" / "a.png").is_file()
