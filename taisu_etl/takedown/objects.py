"""The object store's side of a takedown: image objects deleted (every version and delete marker)
and the taken-down samples' vectors cut out of the stored embedding files."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from taisu_etl.db.ledger import Ledger
from taisu_etl.stages.score import embeddings_key
from taisu_etl.storage import ObjectStore
from taisu_etl.takedown.guard import strip_embeddings as strip_embedding_file

DELETE_WORKERS = 16


@dataclass(frozen=True)
class ObjectAction:
    """One object a takedown changed: `action` deleted (nothing may remain) or rewritten (one version remains)."""

    key: str
    kind: str  # image | embeddings | release_file
    action: str  # deleted | rewritten
    versions_deleted: int


def delete_images(store: ObjectStore, keys: Sequence[str], *, workers: int = DELETE_WORKERS) -> list[ObjectAction]:
    """Delete every version of each key, several at a time (each is a list + delete round trip on S3)."""
    if not keys:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(keys)), thread_name_prefix="takedown-delete") as pool:
        counts = list(pool.map(store.delete_all_versions, keys))
    return [ObjectAction(k, "image", "deleted", n) for k, n in zip(keys, counts)]


def chunk_prefix(model_id: str, shard: int, first_id: int) -> str:
    """The key prefix of the embedding file(s) of one score chunk (the last id is not recorded in events)."""
    full = embeddings_key(model_id, shard, first_id, 0)
    return full[: full.rindex("-") + 1]


def strip_embeddings(
    ledger: Ledger, store: ObjectStore, chunks: Sequence[tuple[str, int, int]], sample_ids: Collection[int], *,
    max_distance: int, say: Callable[[str], None] | None = None,
) -> list[ObjectAction]:
    """Remove the vectors of `sample_ids` (now taken down) from every embedding file of the given score chunks.

    The rewrite is the score stage's own (`guard.strip_embeddings`): a file keeps its other vectors
    and its old versions go; a file left with no vector is deleted. Files without any of the ids
    are not touched.
    """
    actions: list[ObjectAction] = []
    keys = sorted({info.key for model, shard, first in chunks for info in store.list(chunk_prefix(model, shard, first))
                   if info.key.endswith(".npz")})
    for key in keys:
        before = len(store.versions(key))
        removed = strip_embedding_file(ledger, store, key, sample_ids, max_distance=max_distance)
        if not removed:
            continue
        left = len(store.versions(key))
        actions.append(ObjectAction(key, "embeddings", "rewritten" if left else "deleted", before))
        if say:
            say(f"embeddings {key}: {len(removed)} vector(s) removed" + ("" if left else "; the file is gone"))
    return actions
