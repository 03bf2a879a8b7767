"""put_image(check_existing=False): one request, same content-addressed result."""

from __future__ import annotations

import hashlib

from taisu_etl.storage import ObjectStore, image_key


def test_unchecked_put_stores_the_same_key_and_bytes(store: ObjectStore) -> None:
    data = b"\xff\xd8\xff" + bytes(range(256)) * 8
    first = store.put_image(data, check_existing=False)
    again = store.put_image(data, check_existing=False)  # rewriting equal bytes is harmless
    digest = hashlib.sha256(data).hexdigest()
    assert first.key == again.key == image_key(digest)
    assert store.get(first.key) == data
    assert store.put_image(data).created is False  # the checked path still sees it
