"""Run the end-to-end guard tests inside a fresh network namespace with only loopback up.

If the guard were broken, a redirect to 10.0.0.1 or 169.254.169.254 would still reach nothing:
in the namespace there is no route anywhere but 127.0.0.1. The inner run must pass with every
test executed (none skipped), so a namespace that silently failed to isolate cannot pass for one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.fetch.support import NETNS_ENV

ROOT = Path(__file__).resolve().parents[2]
INNER = Path(__file__).with_name("test_guard_netns.py")
UNSHARE = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def _namespace_available() -> str | None:
    if os.environ.get(NETNS_ENV) == "1":
        return "already inside the isolated namespace"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "creating a network namespace needs root (unshare -n)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (iproute2) is not installed"
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"unshare -n failed here: {probe.stderr.strip()[:200]}"
    return None


@pytest.mark.netns
def test_guard_suite_passes_in_an_isolated_network_namespace(tmp_path: Path) -> None:
    why_not = _namespace_available()
    if why_not:
        pytest.skip(why_not)
    report = tmp_path / "inner.xml"
    cmd = [*UNSHARE, sys.executable, "-m", "pytest", str(INNER), "-q", "-p", "no:cacheprovider",
           "-o", "addopts=", f"--junitxml={report}"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, NETNS_ENV: "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"inner run failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == counts["errors"] == counts["skipped"] == 0, counts
    assert counts["tests"] >= 50, counts  # the whole module ran, not an empty selection
