"""Print pip constraints pinning every runtime dependency (and the dask extra) at its declared floor.

CI installs the project against these on the lowest Python that pyproject.toml allows, so the floors
written there are facts, not hopes.
"""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"])
for extra in sys.argv[1:]:
    requirements += project["optional-dependencies"][extra]
for req in requirements:
    match = re.fullmatch(
        r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)(?:\s*,.*)?(?:\s*;.*)?", req.strip()
    )
    if match is None:
        sys.exit(f"floors.py: {req!r} has no '>=' floor to pin")
    print(f"{match[1]}=={match[2]}")
    if match[1] == "dask":
        print(f"distributed=={match[2]}")  # dask[distributed] pins its scheduler to the same release
