"""Build hook only (metadata lives in pyproject.toml): a wheel carries the data it needs.

A non-editable build copies ``configs/``, ``models/`` and ``sample_scans/`` into the wheel as
``pipeline/_data/`` (read through importlib.resources by :func:`pipeline.config.data_root`), so
an installed surgitwin runs ``surgitwin demo`` without the source tree. The repository keeps
its layout; an editable install reads the folders in place.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA = ("configs", "models", "sample_scans")


class BuildWithData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        dest = Path(self.build_lib) / "pipeline" / "_data"
        for name in DATA:
            if (root / name).is_dir():
                shutil.copytree(root / name, dest / name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithData})
