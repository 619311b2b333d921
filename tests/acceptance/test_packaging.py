"""The wheel a user installs: every module of the package, the licence, the type marker, and
the extras the README's commands rely on.

Builds the wheel once (``pip wheel``, build isolation: setuptools from the package index, as
a user's install gets it) and reads it as a zip.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q",
                    "-w", str(out)], check=True, capture_output=True, text=True, timeout=300)
    (path,) = out.glob("vjp_magic-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def _metadata(wheel: zipfile.ZipFile):
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return Parser().parsestr(wheel.read(name).decode())


def test_the_wheel_holds_every_module_of_the_source_tree(wheel):
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "vjp_magic").rglob("*.py")}
    assert source, "no source found"
    assert source <= set(wheel.namelist()), sorted(source - set(wheel.namelist()))


def test_the_wheel_carries_the_licence_and_the_type_marker(wheel):
    names = wheel.namelist()
    licences = [n for n in names if n.endswith("/LICENSE") and ".dist-info/" in n]
    assert licences, names
    assert "MIT License" in wheel.read(licences[0]).decode()
    assert "vjp_magic/py.typed" in names
    assert _metadata(wheel)["License-Expression"] == "MIT"


def test_the_lab_extra_installs_what_the_demo_notebooks_need(wheel):
    lab = [r.split(";")[0].strip() for r in _metadata(wheel).get_all("Requires-Dist")
           if 'extra == "lab"' in r]
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in lab}
    # JupyterLab and Notebook 7 to open them, a kernel, matplotlib for notebook 03's pictures
    assert {"jupyterlab", "notebook", "ipykernel", "matplotlib"} <= names, lab
    notebook_uses_pictures = any("--picture" in p.read_text()
                                 for p in (ROOT / "demo_notebooks").glob("*.ipynb"))
    assert notebook_uses_pictures  # the reason matplotlib is in [lab]
