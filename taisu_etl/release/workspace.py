"""The local folder a release build writes its files in before uploading them, and its clean-up.

A build's folder is `<workdir>/taisu-release-NAME-XXXX` (the CLI's workdir is `<TAISU home>/tmp`,
e.g. var/tmp) with the builder's lease owner token in `.owner`. A run killed outright (SIGKILL, OOM,
a lost node) cannot remove its folder, so every build first removes the folders whose owner is
provably gone: a process of this node that no longer runs. Owners on other nodes (a shared
workdir) are never judged; a folder without an owner file (made by an older version) goes once it
has been untouched for a day.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from taisu_etl.db.leases import LeaseOwner

log = logging.getLogger(__name__)
PREFIX = "taisu-release-"
OWNER_FILE = ".owner"
UNOWNED_MAX_AGE = 24 * 3600.0


def remove_stale(root: Path) -> list[Path]:
    """Remove the build folders under `root` whose owner is provably gone; returns them."""
    removed = []
    try:
        candidates = [p for p in root.iterdir() if p.name.startswith(PREFIX) and p.is_dir()]
    except FileNotFoundError:
        return removed
    for folder in candidates:
        try:
            token = (folder / OWNER_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            token = None
        except OSError:
            continue
        try:
            stale = LeaseOwner.parse(token).is_dead() if token else time.time() - folder.stat().st_mtime > UNOWNED_MAX_AGE
        except OSError:  # removed meanwhile by another run's clean-up
            continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextmanager
def build_folder(workdir: str | Path | None, name: str, owner: LeaseOwner, say: Callable[[str], None]) -> Iterator[Path]:
    """A fresh build folder for release `name` owned by `owner`, removed afterwards; stale ones go first."""
    root = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    stale = remove_stale(root)
    if stale:
        say(f"removed {len(stale)} build folder(s) that killed release runs left in {root}: {', '.join(p.name for p in stale)}")
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{name}-", dir=root))
    try:
        (folder / OWNER_FILE).write_text(owner.token + "\n", encoding="utf-8")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
