"""ImageBatches' worker processes start the same way under every caller, Airflow's task runner included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Run as a script whose own import fails unless it is the main module, as the `airflow` entry
# point fails inside a task (its metadata connection is blocked there). A worker that re-ran the
# caller's main script would die on the import and break the pool.
_SCRIPT = """
import operator, sys
if __name__ != "__main__":
    raise RuntimeError(f"the caller's script was imported again as {__name__}")
from taisu_etl.stages.image_batches import ImageBatches
from taisu_etl.storage import LocalObjectStore
from tests.sources.builders import jpeg

store = LocalObjectStore(sys.argv[1])
rows = [{"id": i, "object_key": store.put(f"images/{i}.jpg", jpeg(i, 32)) and f"images/{i}.jpg"} for i in range(10)]
rows.append({"id": 99, "object_key": "images/missing.jpg"})
with ImageBatches(store, [operator.methodcaller("resize", (8, 8))], batch_size=4, workers=2) as batches:
    kinds = {type(p).__name__ for p in batches._pool._processes.values()} if batches._pool._processes else set()
    done = [b for b in batches(rows)]
    kinds |= {type(p).__name__ for p in batches._pool._processes.values()}
print(sum(len(b.rows) for b in done), sum(len(b.failed) for b in done), done[0].pixels[0].shape[1:], sorted(kinds))
"""


def test_workers_never_import_the_callers_script(tmp_path: Path) -> None:
    script = tmp_path / "main.py"
    script.write_text(_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "objects")], env=env, capture_output=True, text=True,
                         timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[0] == "10 1 (8, 8, 3) ['LeanForkServerProcess']"
