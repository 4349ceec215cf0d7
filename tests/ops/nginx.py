"""Run the real nginx (Debian's package) with deploy/nginx's configuration, on loopback, for tests.

The template is rendered as the nginx image renders it (only its own ${NAME} variables), wrapped
in a minimal main configuration whose every path is inside a temporary prefix folder, and nginx
runs in the foreground as a process group we started, stopped by PID.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest

from tests.live import HOST, ROOT, _stop_group, free_port

NGINX_DIR = ROOT / "deploy" / "nginx"
TEMPLATE = NGINX_DIR / "templates" / "default.conf.template"
PROBLEMS = NGINX_DIR / "problems"
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")

# Everything the server needs besides the template, every path relative to the prefix (-p).
MAIN_CONF = """\
daemon off;
worker_processes 1;
pid nginx.pid;
error_log error.log info;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log access.log;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    include bookstore.conf;
}
"""


def nginx_binary() -> str:
    """Return nginx's path; fail (never skip) when it is missing."""
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.fail("nginx is not installed: .ci/run installs Debian's nginx package for the proxy tests")
    return found


def render(template: str, values: dict[str, str]) -> str:
    """Substitute ${NAME} from values, as envsubst with a variable list does; refuse a missing one."""
    missing = sorted(set(VARIABLE.findall(template)) - set(values))
    if missing:
        raise KeyError(f"no value for {', '.join(missing)}")
    return VARIABLE.sub(lambda m: values[m.group(1)], template)


@dataclass
class NginxServer:
    """nginx with deploy/nginx's server block in front of upstream ("127.0.0.1:PORT"), or of every one of upstreams."""

    upstream: str = ""
    upstreams: tuple[str, ...] = ()
    port: int = 0
    max_body_size: int = 0  # bytes; 0: the app's DATA_UPLOAD_MAX_MEMORY_SIZE
    read_timeout: str = "30s"
    boot_timeout: float = 10.0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    prefix: Path | None = field(default=None, init=False, repr=False)

    def values(self) -> dict[str, str]:
        from django.conf import settings

        assert self.prefix is not None
        return {
            "NGINX_LISTEN": f"{HOST}:{self.port}",
            "BOOKSTORE_UPSTREAM_SERVERS": " ".join(f"server {address};" for address in self.addresses()),
            "DATA_UPLOAD_MAX_MEMORY_SIZE": str(self.max_body_size or settings.DATA_UPLOAD_MAX_MEMORY_SIZE),
            "NGINX_PROXY_READ_TIMEOUT": self.read_timeout,
            "NGINX_PROBLEMS_DIR": str(self.prefix / "problems"),
        }

    def addresses(self) -> tuple[str, ...]:
        found = self.upstreams or ((self.upstream,) if self.upstream else ())
        if not found:
            raise ValueError("no upstream to proxy to")
        return found

    def start(self) -> NginxServer:
        if self.proc is not None:
            raise RuntimeError("already started")
        binary = nginx_binary()
        self.port = self.port or free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="live-nginx-"))
        # Workers run as an unprivileged user when the master is root: they must read the folder.
        self.prefix.chmod(0o755)
        shutil.copytree(PROBLEMS, self.prefix / "problems")
        (self.prefix / "tmp").mkdir()
        (self.prefix / "bookstore.conf").write_text(render(TEMPLATE.read_text(), self.values()))
        (self.prefix / "nginx.conf").write_text(MAIN_CONF)
        with (self.prefix / "stderr.log").open("wb") as stderr:
            self.proc = subprocess.Popen(
                [binary, "-p", f"{self.prefix}/", "-c", str(self.prefix / "nginx.conf")],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.boot_timeout
        while not self._accepts():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log_tail()
                self.stop()
                raise RuntimeError(f"nginx on port {self.port} did not start:\n{log}")
            time.sleep(0.02)
        return self

    def _accepts(self) -> bool:
        try:
            socket.create_connection((HOST, self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        assert self.prefix is not None
        text = ""
        for name in ("stderr.log", "error.log"):
            path = self.prefix / name
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text or "(no log)"

    def stop(self, grace: float = 5.0) -> None:
        """Stop nginx by its process group (SIGTERM is nginx's fast shutdown), then delete its folder."""
        if self.proc is not None:
            _stop_group(self.proc, grace)
            self.proc = None
        if self.prefix is not None:
            shutil.rmtree(self.prefix, ignore_errors=True)
            self.prefix = None

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
