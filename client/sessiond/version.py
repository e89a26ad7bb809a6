"""What this sessiond is: its version and, when known, the git revision it was built from.

The version is the installed distribution's (``importlib.metadata``). The
revision is decided in this order:

1. ``sessiond/BUILD_REVISION``, which the wheel build writes (``setup.py``):
   a wheel or an image knows the commit it was built from, with ``-dirty``
   when the tree had uncommitted changes;
2. for a source checkout (an editable install, ``make install``), git is asked
   at run time, so the answer follows the checkout;
3. otherwise ``unknown`` (a build from an sdist or a tree without git).

``sessiond --version``, the server's start log line and the
``sessiond_build_info`` metric all read ``build_info()``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import subprocess
from pathlib import Path

#: The file the wheel build writes next to this module.
REVISION_FILE = "BUILD_REVISION"
UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class BuildInfo:
    version: str
    revision: str

    def __str__(self) -> str:
        return f"sessiond {self.version} (revision {self.revision})"


@functools.cache
def build_info() -> BuildInfo:
    """This installation's version and revision (computed once per process)."""
    try:
        version = importlib.metadata.version("sessiond")
    except importlib.metadata.PackageNotFoundError:  # run from a tree, never installed
        version = UNKNOWN
    return BuildInfo(version, _revision(Path(__file__).resolve().parent))


def _revision(package: Path) -> str:
    written = package / REVISION_FILE
    if written.is_file():
        return written.read_text(encoding="utf-8").strip() or UNKNOWN
    if any(part in ("site-packages", "dist-packages") for part in package.parts):
        return UNKNOWN  # installed without a recorded revision; git here would be another repo's
    return git_revision(package) or UNKNOWN


def git_revision(directory: Path) -> str | None:
    """The commit checked out at ``directory`` (12 hex digits, ``-dirty`` with uncommitted
    changes to tracked files); None outside a git work tree or without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit
