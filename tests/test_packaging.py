"""The release package: ``python -m build`` makes an sdist and a wheel, and the wheel works
when installed into a fresh virtual environment (import, ``losslab list``, ``losslab info``,
bundled data files, ``py.typed``, one version string)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
import tomllib

import losslab

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "pyproject.toml").is_file(), reason="needs the source tree")


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # Built from a copy of the tree: setuptools' build/ folder in a working tree keeps files of
    # deleted modules, which would then ship in the wheel.
    src = tmp_path_factory.mktemp("tree") / "losslab"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "runs", "_build", ".hypothesis"))
    # --no-isolation: build with the setuptools and wheel of this environment (the dev extra
    # installs them) instead of downloading them into a throwaway one.
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def test_version_has_one_source():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"]["attr"] == "losslab._version.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+", losslab.__version__)
    hits = [p for p in (ROOT / "src").rglob("*.py") if re.search(r"^__version__\s*=", p.read_text(), re.M)]
    assert [p.name for p in hits] == ["_version.py"]


def test_changelog_names_the_current_version():
    assert f"## [{losslab.__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_wheel_and_sdist_contents(dist):
    wheel = _one(dist, f"losslab-{losslab.__version__}-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src/losslab/data").glob("*.txt")]
    assert data, "no bundled data file found in the source tree"
    for required in [*data, "losslab/py.typed", "losslab/_version.py", "losslab/cli/main.py"]:
        assert required in names, required
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    meta = zipfile.ZipFile(wheel).read(f"losslab-{losslab.__version__}.dist-info/METADATA").decode()
    assert f"Version: {losslab.__version__}" in meta and "License-Expression: Apache-2.0" in meta
    assert "Classifier: Typing :: Typed" in meta
    entry = zipfile.ZipFile(wheel).read(f"losslab-{losslab.__version__}.dist-info/entry_points.txt").decode()
    assert "losslab = losslab.cli.main:main" in entry
    sdist = _one(dist, f"losslab-{losslab.__version__}.tar.gz")
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "LICENSE", "src/losslab/py.typed"} <= members


def test_wheel_installs_into_a_fresh_environment(dist, tmp_path):
    wheel = _one(dist, "losslab-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    # The wheel goes in with pip from this environment; torch and numpy (several hundred MB)
    # come from this environment's site-packages through a .pth file instead of a reinstall.
    # losslab itself is installed here in editable mode, through a finder that a .pth path
    # entry does not activate, so the import below must find the wheel's copy.
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--quiet",
                           "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "_host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}

    def run(*cmd: str) -> str:
        out = subprocess.run(cmd, capture_output=True, text=True, env=clean, cwd=tmp_path, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out.stdout

    where = run(str(py), "-c", "import losslab, importlib.resources as r; print(losslab.__file__); "
                "print(losslab.__version__); print(r.files('losslab').joinpath('py.typed').is_file()); "
                "from losslab.data import sklearn_sets; "
                "print(sum(1 for f in r.files('losslab.data').iterdir() if f.name.endswith('.txt')))").split()
    assert Path(where[0]).is_relative_to(env_dir), where[0]
    assert where[1] == losslab.__version__ and where[2] == "True" and int(where[3]) >= 1
    listing = run(str(env_dir / "bin" / "losslab"), "list")
    assert len(listing.splitlines()) == len(losslab.list_losses())
    assert "cross_entropy" in listing
    shown = run(str(env_dir / "bin" / "losslab"), "info", "cross_entropy")
    assert "losslab.functional.cross_entropy(" in shown and str(losslab.info("cross_entropy").reference.year) in shown
