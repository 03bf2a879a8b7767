"""Which ids one release added and removed against another, by merging their sorted `ids.txt`.

Both lists are streamed: comparing two 166M-sample releases needs no more memory than two lines.
A release is `NAME` (its current version) or `NAME@N` (version N, whose id list a takedown patch
kept under `history/vN/ids.txt`): `diff NAME@1 NAME` shows what the patches removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO, Any

from taisu_etl.release import layout
from taisu_etl.release.errors import ReleaseError, ReleaseNotFoundError
from taisu_etl.release.manifest import read_manifest, version_of
from taisu_etl.storage import ObjectStore

EXAMPLES = 20


def _ids(lines: Iterable[bytes | str], where: str) -> Iterator[str]:
    last = ""
    for raw in lines:
        text = raw.decode() if isinstance(raw, bytes) else raw
        sid = text.rstrip("\n")
        if not sid:
            continue
        if sid <= last:
            raise ReleaseError(f"{where} is not sorted and unique ({sid!r} after {last!r}): the release is damaged")
        last = sid
        yield sid


def merge_diff(old: Iterable[bytes | str], new: Iterable[bytes | str], *, old_name: str = "old ids", new_name: str = "new ids") -> Iterator[tuple[str, str]]:
    """("+", id) for ids only in `new`, ("-", id) for ids only in `old`, in id order."""
    a, b = _ids(old, old_name), _ids(new, new_name)
    x, y = next(a, None), next(b, None)
    while x is not None or y is not None:
        if y is None or (x is not None and x < y):
            yield "-", x  # type: ignore[misc]
            x = next(a, None)
        elif x is None or y < x:
            yield "+", y
            y = next(b, None)
        else:
            x, y = next(a, None), next(b, None)


@dataclass
class DiffReport:
    """How release `b` differs from release `a`; the first EXAMPLES ids of each kind are kept."""

    a: str
    b: str
    added: int = 0
    removed: int = 0
    added_examples: list[str] = field(default_factory=list)
    removed_examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.b} against {self.a}: {self.added:,} added, {self.removed:,} removed"]
        lines += [f"  + {i}" for i in self.added_examples]
        if self.added > len(self.added_examples):
            lines.append(f"  + ... {self.added - len(self.added_examples):,} more")
        lines += [f"  - {i}" for i in self.removed_examples]
        if self.removed > len(self.removed_examples):
            lines.append(f"  - ... {self.removed - len(self.removed_examples):,} more")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "added": self.added, "removed": self.removed,
                "added_examples": self.added_examples, "removed_examples": self.removed_examples}


def _open_ids(store: ObjectStore, spec: str) -> IO[bytes]:
    name, version = layout.split_version(spec)
    manifest = read_manifest(store, name)
    if manifest is None:
        raise ReleaseNotFoundError(f"release {name} does not exist in {store.describe()} (no {layout.key(name, layout.MANIFEST)})")
    current = version_of(manifest)
    if version is not None and version > current:
        raise ReleaseNotFoundError(f"release {name} has no version {version}: its current version is {current}")
    path = layout.IDS if version is None or version == current else layout.history_ids(version)
    try:
        return store.open(layout.key(name, path))  # type: ignore[return-value]
    except KeyError:
        raise ReleaseError(f"release {name} has no {path}: the release is damaged (run `verify {name}`)") from None


def iter_diff(store: ObjectStore, a: str, b: str) -> Iterator[tuple[str, str]]:
    """Every difference of release `b` against release `a` (each NAME or NAME@VERSION), as ("+" | "-", id), in id order."""
    with ExitStack() as stack:
        old = stack.enter_context(_open_ids(store, a))
        new = stack.enter_context(_open_ids(store, b))
        yield from merge_diff(old, new, old_name=f"the id list of {a}", new_name=f"the id list of {b}")


def diff_releases(store: ObjectStore, a: str, b: str, *, examples: int = EXAMPLES) -> DiffReport:
    """Ids added and removed going from release `a` to release `b`."""
    report = DiffReport(a, b)
    for sign, sid in iter_diff(store, a, b):
        if sign == "+":
            report.added += 1
            if len(report.added_examples) < examples:
                report.added_examples.append(sid)
        else:
            report.removed += 1
            if len(report.removed_examples) < examples:
                report.removed_examples.append(sid)
    return report
