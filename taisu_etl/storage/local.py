"""Object store in a local directory, for the embedded mode and for tests.

Each key is a file under the root. Writes go to a hidden temporary file in the target
directory and are renamed into place, so a crash leaves either the old object or the new
one, never half of one; listings skip the temporaries a crash may leave behind.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO

from taisu_etl.errors import StorageError
from taisu_etl.storage.base import (
    ObjectInfo,
    ObjectStore,
    guess_content_type,
    validate_key,
    validate_prefix,
)

_TMP_SUFFIX = ".taisu-tmp"
_COPY_BUFFER = 1024 * 1024
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(_TMP_SUFFIX)


class LocalObjectStore(ObjectStore):
    """Objects as files under `root`, which is created on first write.

    Content types are not stored: they are derived from the key's extension. There are no
    versions: `delete_all_versions` removes the one file.
    """

    def __init__(self, root: str | Path, *, fsync: bool = False) -> None:
        # fsync is off by default: os.replace already protects against process crashes,
        # and syncing every one of millions of small images costs more than it saves.
        self.root = Path(root).expanduser().absolute()
        self._fsync = fsync

    def describe(self) -> str:
        return f"local:{self.root}"

    def _path(self, key: str) -> Path:
        validate_key(key)
        if any(_is_temp_name(segment) for segment in key.split("/")):
            raise ValueError(f"bad object key {key!r}: names like '.x{_TMP_SUFFIX}' are reserved")
        return self.root.joinpath(*key.split("/"))

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
            last_modified=datetime.fromtimestamp(st.st_mtime, tz=UTC),
            content_type=guess_content_type(key),
        )

    def _write(self, key: str, fill: Callable[[BinaryIO], object]) -> ObjectInfo:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{secrets.token_hex(8)}{_TMP_SUFFIX}"
            # os.open with 0o666 lets the umask decide, where mkstemp would force 0600 and
            # hide the objects from other users of a shared store.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                with os.fdopen(fd, "wb") as out:
                    fill(out)
                    if self._fsync:
                        out.flush()
                        os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            if self._fsync:
                _fsync_dir(path.parent)
            return self._info(key, path.stat())
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise StorageError(
                f"cannot store {key!r} in the local object store {self.root}: a file and a "
                "directory would share one path, and keys here cannot be both 'a' and 'a/b'"
            ) from exc
        except OSError as exc:
            raise StorageError(
                f"cannot write {key!r} to the local object store {self.root} "
                f"({exc.strerror or exc}): check the directory's permissions and free space"
            ) from exc

    def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        return self._write(key, lambda out: out.write(data))

    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> ObjectInfo:
        # Opened before _write so that a missing source file surfaces as its own
        # FileNotFoundError rather than as a failure to write the store.
        with open(path, "rb") as source:
            return self._write(key, lambda out: shutil.copyfileobj(source, out, _COPY_BUFFER))

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except _MISSING:
            raise KeyError(key) from None

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except _MISSING:
            raise KeyError(key) from None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except _MISSING:
            return None
        return self._info(key, st) if _is_regular(st) else None

    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        # Start in the deepest directory the prefix names completely; the rest of the
        # prefix is matched against names.
        base = prefix[: prefix.rfind("/") + 1]
        start = self.root.joinpath(*base.split("/")[:-1]) if base else self.root
        return self._walk(start, base, prefix, recursive)

    def _walk(
        self, directory: Path, dir_key: str, prefix: str, recursive: bool
    ) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = [e for e in it if not _is_temp_name(e.name)]
        except _MISSING:
            return
        # Sorting directories as "name/" makes the depth-first walk come out in global key
        # order: "a-b" < "a/x" although "a" < "a-b".
        entries.sort(key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
        for entry in entries:
            key = dir_key + entry.name
            if entry.is_dir(follow_symlinks=False):
                sub = key + "/"
                if recursive and (sub.startswith(prefix) or prefix.startswith(sub)):
                    yield from self._walk(Path(entry.path), sub, prefix, recursive)
            elif key.startswith(prefix):
                try:
                    st = entry.stat()
                except FileNotFoundError:  # deleted while we were listing
                    continue
                if _is_regular(st):
                    yield self._info(key, st)

    def presigned_get_url(self, key: str, expires_s: int = 3600) -> str:
        """A file:// URL; it does not expire, so `expires_s` is ignored."""
        return self._path(key).as_uri()

    def delete_all_versions(self, key: str) -> int:
        path = self._path(key)
        try:
            path.unlink()
        except _MISSING:
            return 0
        except OSError as exc:
            raise StorageError(
                f"cannot delete {key!r} from the local object store {self.root} "
                f"({exc.strerror or exc}): check the directory's permissions"
            ) from exc
        # Empty parent directories are left in place: removing them could race with a
        # writer that has just created them for a new object.
        return 1

    def versions(self, key: str) -> list[str]:
        # A rename replaces a file whole, so the local store keeps only the current bytes.
        return ["current"] if self.stat(key) is not None else []

    def delete_noncurrent_versions(self, key: str) -> int:
        validate_key(key)
        return 0

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise StorageError(
                f"the local object store root {self.root} exists but is not a directory: "
                "move it away or choose another directory"
            ) from exc
        except OSError as exc:
            raise StorageError(
                f"cannot create the local object store root {self.root} ({exc.strerror or exc}): "
                "check the parent directory's permissions or choose another directory"
            ) from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(
                f"the local object store root {self.root} is not writable: fix its permissions "
                "or choose another directory"
            )


def _is_regular(st: os.stat_result) -> bool:
    return S_ISREG(st.st_mode)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems refuse fsync on directories; the file itself is already synced.
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)
