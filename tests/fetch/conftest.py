"""Every fetch test runs under a `NetSpy`: no connection may leave for anything but the test's
own loopback server, and no real DNS lookup happens. A violation fails the test even when the
code under test swallowed the refusal."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fetch.support import NetSpy


@pytest.fixture(autouse=True)
def net(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetSpy]:
    spy = NetSpy()
    spy.install(monkeypatch)
    yield spy
    assert not spy.violations, f"forbidden network activity: {spy.violations}"
