"""A web server neither tool wrote: Debian's nginx serving a folder of files on 127.0.0.1.

bench/fetch.py's synthetic web is the project's own aiohttp server; a comparison served by it could
favour the tool it was written beside. This one is plain nginx (`apt-get install nginx-light`),
one worker process, access log off, sendfile on, keep-alive as nginx ships it (1,000 requests
per connection). Files are served under /img/; a missing name is nginx's own 404.

    with StaticWeb(folder) as web:
        web.url("img/x.jpg")  ->  http://127.0.0.1:PORT/img/x.jpg
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

_CONF = """\
worker_processes {workers};
daemon off;
master_process on;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    types {{ image/jpeg jpg; text/plain txt; }}
    default_type application/octet-stream;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    open_file_cache max=20000 inactive=60s;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /img/ {{ }}
    }}
}}
"""


def nginx_available() -> bool:
    return NGINX is not None


class StaticWeb:
    """nginx in its own process serving `root` (a folder holding img/ and, optionally, robots.txt)."""

    def __init__(self, root: Path, *, workers: int = 1) -> None:
        if NGINX is None:
            raise SystemExit("nginx not found: `apt-get install nginx-light` (Debian) installs it")
        self.root = Path(root).resolve()
        self.workers = workers
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._run: Path | None = None

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.netloc}/{path.lstrip('/')}"

    def pids(self) -> list[int]:
        """The master and its workers (for CPU accounting)."""
        if self.proc is None:
            return []
        out = [self.proc.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        if int(f.read().rpartition(")")[2].split()[1]) == self.proc.pid:
                            out.append(int(entry))
                except (OSError, ValueError, IndexError):
                    continue
        return out

    def __enter__(self) -> StaticWeb:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._run = Path(tempfile.mkdtemp(prefix="nginx-run-"))
        # As root the workers would drop to `nobody`, who may not read a private temp folder.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self._run / "nginx.conf"
        conf.write_text(_CONF.format(workers=self.workers, run=self._run, port=self.port, root=self.root, user=user))
        self.proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(self._run)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(100):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise SystemExit(f"nginx exited with code {self.proc.returncode} at start-up: {err[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__(None, None, None)
        raise SystemExit(f"nginx did not start listening on {self.netloc}")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: the master stops its workers
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._run is not None:
            shutil.rmtree(self._run, ignore_errors=True)
            self._run = None
