"""Upstreams that read paths as real servers do, and say which area they served.

- ``NginxUpstream``: Debian's nginx routing by location prefix (it decodes the
  target once, merges slashes and resolves dot segments before matching).
- ``ReadingUpstream``: a small HTTP server reading the raw target the way a
  servlet container does (``;params`` dropped, ``\\`` read as ``/``, decoded
  once, dot segments resolved), optionally also as IIS does (case and a
  segment's trailing dots and spaces ignored).

Both answer ``area=<public|admin|app> uri=<what they read>``: a test sends a
tricky target through the gateway and checks which area answered.
"""

from __future__ import annotations

import os
import re
import shutil
import socketserver
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote_to_bytes

from tests.processes import free_port, wait_for_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        default_type text/plain;
        location /public/ {{ return 200 "area=public uri=$uri\\n"; }}
        location = /healthz {{ return 200 "area=public uri=$uri\\n"; }}
        location /admin/ {{ return 200 "area=admin uri=$uri\\n"; }}
        location / {{ return 200 "area=app uri=$uri\\n"; }}
    }}
}}
"""


class NginxUpstream:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NginxUpstream:
        self.tmp.mkdir(parents=True, exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = self.tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, tmp=self.tmp, port=self.port))
        self.process = subprocess.Popen(
            [NGINX, "-e", str(self.tmp / "nginx-error.log"), "-c", str(conf), "-p", str(self.tmp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port, process=self.process)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def resolve(path: str) -> str:
    """Merge slashes, then RFC 3986 dot-segment removal."""
    parts = re.sub("/+", "/", path).split("/")[1:]
    out: list[str] = []
    for i, part in enumerate(parts):
        if part in (".", ".."):
            if part == ".." and out:
                out.pop()
            if i == len(parts) - 1:
                out.append("")
            continue
        out.append(part)
    return "/" + "/".join(out)


def servlet_path(raw: str) -> str:
    """As Tomcat reads a target: ;params dropped, decoded once, \\ as /, resolved."""
    stripped = "/".join(part.split(";", 1)[0] for part in raw.split("?", 1)[0].split("/"))
    decoded = unquote_to_bytes(stripped).decode("latin-1").replace("\\", "/")
    decoded = "/".join(part.split(";", 1)[0] for part in decoded.split("/"))
    return resolve(decoded)


def iis_path(raw: str) -> str:
    servlet = servlet_path(raw).lower()
    return resolve("/".join(part.rstrip(". ") for part in servlet.split("/")))


def area(path: str) -> str:
    if path.startswith("/public/") or path == "/public" or path == "/healthz":
        return "public"
    if path.startswith("/admin/") or path == "/admin":
        return "admin"  # a servlet mapping "/admin/*" serves "/admin" too
    return "app"


class _Handler(BaseHTTPRequestHandler):
    reader = staticmethod(servlet_path)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.reader(self.path)
        body = f"area={area(path)} uri={path}\n".encode("latin-1", "replace")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


class ReadingUpstream:
    """A servlet-style (or, with ``iis=True``, IIS-style) upstream in a thread."""

    def __init__(self, *, iis: bool = False) -> None:
        reader = iis_path if iis else servlet_path
        handler = type("Handler", (_Handler,), {"reader": staticmethod(reader)})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ReadingUpstream:
        self.thread.start()
        time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
