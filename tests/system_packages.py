"""Debian packages the tests need (Chromium, PostgreSQL), installed on first use where that is possible.

As root with apt-get (CI, a fresh machine) a missing package is installed (`apt-get update` first when the package
lists are missing); elsewhere the caller skips, with the reason this returns.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable


def apt_install(packages: list[str], present: Callable[[], bool]) -> str | None:
    """None when `present()` holds (after installing `packages` if needed); else why the packages are unusable."""
    if present():
        return None
    names = " and ".join(packages)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{names} missing and cannot be installed here (needs root and apt-get): apt-get install " + " ".join(
            packages
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *packages]
    done = subprocess.run(install, env=env, capture_output=True, timeout=900)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=900)
        done = subprocess.run(install, env=env, capture_output=True, timeout=900)
    if done.returncode != 0 or not present():
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return f"apt-get install {' '.join(packages)} failed: {tail[0]}"
    return None
