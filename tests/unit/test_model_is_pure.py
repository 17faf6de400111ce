"""flannel.model is pure: importing it loads no asyncio, socket, subprocess or file-I/O module."""

import json
import subprocess
import sys

FORBIDDEN = {"asyncio", "socket", "subprocess", "selectors", "ssl", "shutil", "tempfile", "pathlib"}

PROBE = """
import json, sys
before = set(sys.modules)
import importlib, pkgutil
import flannel.model
for info in pkgutil.iter_modules(flannel.model.__path__):
    importlib.import_module("flannel.model." + info.name)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_importing_every_model_module_loads_no_io_module() -> None:
    out = subprocess.run(
        [sys.executable, "-I", "-c", PROBE], capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout))
    assert any(name.startswith("flannel.model.") for name in loaded)
    assert not (FORBIDDEN & loaded), sorted(FORBIDDEN & loaded)
