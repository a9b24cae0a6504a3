"""The README's Python example runs as a user would paste it: a plain script, no main guard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_example() -> str:
    text = README.read_text()
    start = text.index("## Python")
    block = text[text.index("```python\n", start) + len("```python\n") :]
    return block[: block.index("```")]


@pytest.mark.slow
def test_the_python_example_runs_as_an_unguarded_script(tmp_path):
    code = python_example()
    assert "__main__" not in code  # workers never import the script: no guard needed
    # The file jobs at its end need files of the user's: the array part runs as written.
    code = code[: code.index("tiler.process_file(")]
    script = tmp_path / "example.py"
    script.write_text(code + "print('done', out.shape, result.dtype)\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "done (1080, 1920, 3) uint8" and run.stderr == ""
