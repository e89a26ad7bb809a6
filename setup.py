"""The wheel build records the git revision it was built from (sessiond/BUILD_REVISION).

Everything else about the package is declared in pyproject.toml; this file
only adds that one step to ``build_py``. ``sessiond.version`` reads the file,
and falls back to asking git (a source checkout) or to "unknown".
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# The module alone, by path: importing the sessiond package would need grpc,
# which the isolated build environment does not have.
_spec = importlib.util.spec_from_file_location("sessiond_version",
                                               ROOT / "client" / "sessiond" / "version.py")
assert _spec is not None and _spec.loader is not None
version = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = version  # dataclasses look their module up there
_spec.loader.exec_module(version)


class BuildPyWithRevision(build_py):
    def run(self) -> None:
        super().run()
        revision = version.git_revision(ROOT)
        if revision and not self.editable_mode:  # an editable install asks git at run time
            target = Path(self.build_lib) / "sessiond" / version.REVISION_FILE
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(revision + "\n", encoding="utf-8")


setup(cmdclass={"build_py": BuildPyWithRevision})
