"""A normal (non-editable) install ships kernels/ as ragkv.kernels, never as `kernels`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_kernels_into_ragkv(tmp_path: Path) -> None:
    source = tmp_path / "src"  # build from a copy: setuptools writes build/ next to the source
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("ragkv", "kernels"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("ragkv-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ragkv/kernels/ops.py" in names
    assert not any(name.startswith("kernels/") for name in names)
    for package in ("cache", "engine", "retrieval", "server"):
        assert f"ragkv/{package}/__init__.py" in names


def test_editable_install_imports_ragkv_kernels() -> None:
    import ragkv.kernels.ops as ops

    assert Path(ops.__file__).resolve() == ROOT / "kernels" / "ops.py"
