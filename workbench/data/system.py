"""Debian packages the data builders need: never installed behind the user's back.

`make apt` installs them (as root); `workbench data build --install-system-packages` asks for it
explicitly. Library code only names what is missing and how to get it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence


def how_to_install(pkgs: Sequence[str]) -> str:
    """The fix to print when `pkgs` are missing."""
    names = " ".join(pkgs)
    return (f"install them with `make apt` (as root) or `sudo apt-get install -y {names}`, "
            f"or pass --install-system-packages to `workbench data build`")


def install_debian_packages(pkgs: Sequence[str]) -> bool:
    """apt-get install `pkgs` (only as root, only when the caller was asked to); True if it ran."""
    if not pkgs or not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")):
        return False
    subprocess.run(["apt-get", "install", "-y", *pkgs], capture_output=True, text=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return True
