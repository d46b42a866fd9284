"""Run the WSO2-shaped OpenID provider (tests/provider, node + oidc-provider).

    with ProviderProcess(tmp_path, config) as op:
        op.issuer()                    # https://localhost:N/oauth2/token
        op.issuer("acme.com")          # https://localhost:N/t/acme.com/oauth2/token
        op.discovery_url()             # .../oauth2/oidcdiscovery/.well-known/openid-configuration
        op.ca_file                     # PEM to trust for https://localhost:N
        location = op.scripted_login(authorize_url, "alice", "alice123")
        op.admin_logout("carbon.super", "alice")

``config`` is written to CONFIG.json (see tests/provider/config.mjs): tenants with
users and clients, ``ttl`` overrides, ``consent_page``, ``logout_consent``,
``trusted_ca_files``. The default users exist unless a tenant lists its own:
carbon.super alice/alice123 and bob/bob123, acme.com carol/carol123.

Only the standard library is used to talk to the provider, so the helper serves
pytest and the demo script alike.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import html.parser
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from tests.certs import CA, Leaf, make_ca

REPO = Path(__file__).resolve().parent.parent
PROVIDER_DIR = REPO / "tests" / "provider"
SERVER = PROVIDER_DIR / "server.mjs"
SUPER_TENANT = "carbon.super"
READY_TIMEOUT = 30.0
NPM_CI_TIMEOUT = 300.0

DEFAULT_USERS: dict[str, dict[str, str]] = {
    "carbon.super": {"alice": "alice123", "bob": "bob123"},
    "acme.com": {"carol": "carol123"},
}


class ProviderError(RuntimeError):
    """The provider did not start, or a scripted step got an unexpected answer."""


def node_binary() -> str | None:
    return shutil.which("node")


def npm_binary() -> str | None:
    return shutil.which("npm")


def _installed() -> bool:
    marker = PROVIDER_DIR / "node_modules" / ".package-lock.json"
    package = PROVIDER_DIR / "node_modules" / "oidc-provider" / "package.json"
    lock = PROVIDER_DIR / "package-lock.json"
    return (
        package.exists() and marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime - 1
    )


def ensure_node_modules() -> None:
    """``npm ci`` in tests/provider once, unless node_modules is already there.

    A file lock keeps parallel pytest workers from installing at the same time.
    """
    if _installed():
        return
    npm = npm_binary()
    if npm is None:
        raise ProviderError("npm is not installed; cannot install tests/provider dependencies")
    digest = hashlib.sha256(str(PROVIDER_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"idgateway-provider-npm-{digest}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _installed():
                return
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=PROVIDER_DIR,
                capture_output=True,
                text=True,
                timeout=NPM_CI_TIMEOUT,
            )
            if result.returncode != 0:
                raise ProviderError(
                    f"npm ci failed in {PROVIDER_DIR}:\n{result.stdout}\n{result.stderr}"
                )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _Forms(html.parser.HTMLParser):
    """The forms of a page: action, method and input values (hidden ones included)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(
                {
                    "id": attributes.get("id", ""),
                    "action": attributes.get("action", ""),
                    "method": attributes.get("method", "get").lower(),
                    "fields": {},
                }
            )
        elif tag == "input" and self.forms and "name" in attributes:
            self.forms[-1]["fields"][attributes["name"]] = attributes.get("value", "")


def _forms(page: str) -> list[dict[str, Any]]:
    parser = _Forms()
    parser.feed(page)
    return parser.forms


class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.text[:200]!r}>"


class Browser:
    """Just enough of a browser for the provider: cookies (by path) and redirects."""

    def __init__(self, provider: ProviderProcess) -> None:
        self.provider = provider
        self.cookies: dict[str, tuple[str, str]] = {}  # name -> (value, path)

    def _cookie_header(self, path: str) -> str:
        return "; ".join(
            f"{name}={value}"
            for name, (value, cookie_path) in self.cookies.items()
            if path.startswith(cookie_path.rstrip("/") or "/")
        )

    def _store(self, headers: http.client.HTTPMessage) -> None:
        for header in headers.get_all("Set-Cookie") or []:
            jar = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                expired = morsel["max-age"] == "0" or "1970" in morsel["expires"]
                if expired or morsel.value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = (morsel.value, morsel["path"] or "/")

    def request(
        self,
        method: str,
        url: str,
        form: Mapping[str, str] | None = None,
    ) -> Response:
        path = urlsplit(url).path or "/"
        headers = {"Accept": "text/html,application/json"}
        cookie = self._cookie_header(path)
        if cookie:
            headers["Cookie"] = cookie
        response = self.provider.request(method, url, form=form, headers=headers)
        self._store(response.headers)
        return response


class ProviderProcess:
    """``node tests/provider/server.mjs`` on a free port, with its own TLS certificate."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any] | None = None,
        *,
        ca: CA | None = None,
        quiet: bool = False,
    ) -> None:
        """``ca``: issue the provider's certificate from this CA (handy when the
        gateway's certificates come from it too: the provider then trusts the
        gateway for back-channel logout). Without one, a CA is made in workdir."""
        self.workdir = Path(workdir)
        self.config = config
        self.ca = ca
        self.quiet = quiet
        self.process: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}
        self.leaf: Leaf | None = None
        self._log_file: Any = None
        self._ssl: ssl.SSLContext | None = None

    # ---- life cycle ----

    def start(self) -> ProviderProcess:
        node = node_binary()
        if node is None:
            raise ProviderError("node is not installed")
        ensure_node_modules()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.ca is None:
            self.ca = make_ca(self.workdir, "idgateway provider CA")
        self.leaf = self.ca.issue(self.workdir, ["localhost", "127.0.0.1"], name="provider")

        config = dict(self.config or {})
        trusted = list(config.get("trusted_ca_files", []))
        trusted.append(str(self.ca.cert_path))
        config["trusted_ca_files"] = trusted
        config_path = self.workdir / "provider-config.json"
        config_path.write_text(json.dumps(config, indent=2))
        ready_file = self.workdir / "provider-ready.json"
        ready_file.unlink(missing_ok=True)
        self.log_path = self.workdir / "provider.log"
        self._log_file = open(self.log_path, "wb")  # closed in stop()

        command = [
            node,
            str(SERVER),
            "--port",
            "0",
            "--ready-file",
            str(ready_file),
            "--cert",
            str(self.leaf.cert_path),
            "--key",
            str(self.leaf.key_path),
            "--config",
            str(config_path),
        ]
        if self.quiet:
            command.append("--quiet")
        self.process = subprocess.Popen(
            command,
            cwd=PROVIDER_DIR,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready_file.exists():
            if self.process.poll() is not None:
                output = self.output()
                self.stop()
                raise ProviderError(f"provider exited with {self.process.returncode}:\n{output}")
            if time.monotonic() > deadline:
                output = self.output()
                self.stop()
                raise ProviderError(f"provider not ready after {READY_TIMEOUT}s:\n{output}")
            time.sleep(0.05)
        self.ready = json.loads(ready_file.read_text())
        return self

    def stop(self) -> int | None:
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def __enter__(self) -> ProviderProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def output(self) -> str:
        path = getattr(self, "log_path", None)
        if path is None or not path.exists():
            return ""
        return path.read_text(errors="replace")

    # ---- addresses ----

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @property
    def base_url(self) -> str:
        return str(self.ready["base_url"])

    @property
    def ca_file(self) -> Path:
        assert self.ca is not None
        return self.ca.cert_path

    def tenant_base(self, tenant: str = SUPER_TENANT) -> str:
        if tenant == SUPER_TENANT:
            return self.base_url
        return f"{self.base_url}/t/{tenant}"

    def issuer(self, tenant: str = SUPER_TENANT) -> str:
        return f"{self.tenant_base(tenant)}/oauth2/token"

    def discovery_url(self, tenant: str = SUPER_TENANT) -> str:
        return f"{self.tenant_base(tenant)}/oauth2/oidcdiscovery/.well-known/openid-configuration"

    def token_discovery_url(self, tenant: str = SUPER_TENANT) -> str:
        return f"{self.tenant_base(tenant)}/oauth2/token/.well-known/openid-configuration"

    def endpoint(self, path: str, tenant: str = SUPER_TENANT) -> str:
        """``endpoint("/oauth2/introspect", "acme.com")`` and the like."""
        return f"{self.tenant_base(tenant)}{path}"

    def users(self, tenant: str = SUPER_TENANT) -> dict[str, str]:
        """username -> sub, as the provider runs it."""
        return {u["username"]: u["sub"] for u in self.ready["tenants"][tenant]["users"]}

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl

    # ---- HTTP ----

    def request(
        self,
        method: str,
        url: str,
        *,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        basic_auth: tuple[str, str] | None = None,
        bearer: str | None = None,
        timeout: float = 10.0,
    ) -> Response:
        """One request to the provider (no redirects followed).

        Connects to 127.0.0.1 and sends Host: localhost:N, whatever host ``url`` names.
        """
        parts = urlsplit(url)
        if parts.scheme != "https":
            raise ValueError(f"the provider speaks https only: {url}")
        target = parts.path or "/"
        if parts.query:
            target += f"?{parts.query}"
        all_headers = {"Host": f"localhost:{self.port}", "Connection": "close"}
        all_headers.update(headers or {})
        body = None
        if form is not None:
            body = urlencode(form).encode()
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        if basic_auth is not None:
            token = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
            all_headers["Authorization"] = f"Basic {token}"
        if bearer is not None:
            all_headers["Authorization"] = f"Bearer {bearer}"
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.ssl_context(), timeout=timeout
        )
        try:
            connection.request(method, target, body=body, headers=all_headers)
            response = connection.getresponse()
            return Response(response.status, response.headers, response.read())
        finally:
            connection.close()

    def get_json(self, url: str, **kwargs: Any) -> Any:
        response = self.request("GET", url, **kwargs)
        if response.status != 200:
            raise ProviderError(f"GET {url} -> {response.status}: {response.text}")
        return response.json()

    # ---- scripted browser ----

    def browser(self) -> Browser:
        return Browser(self)

    def scripted_login(
        self,
        authorize_url: str,
        username: str,
        password: str,
        browser: Browser | None = None,
    ) -> str:
        """Log in through the provider's pages and return the redirect back to the client.

        Follows the authorize redirect to the login page, submits the form (and
        approves the consent page if the provider shows one), follows the
        provider's redirects with its cookies, and returns the first Location that
        leaves the provider (the client's redirect_uri with code, state, ...),
        without following it. Pass the same ``browser`` to keep the provider
        session between calls (single sign-on).
        """
        browser = browser or self.browser()
        url = authorize_url
        method, form = "GET", None
        login_posted = False
        for _ in range(20):
            response = browser.request(method, url, form=form)
            if response.status in (301, 302, 303, 307, 308):
                location = urljoin(url, response.location or "")
                if not self._is_provider_url(location):
                    return location
                url, method, form = location, "GET", None
                continue
            if response.status != 200:
                raise ProviderError(f"{method} {url} -> {response.status}: {response.text[:500]}")
            forms = {f["id"]: f for f in _forms(response.text)}
            if "loginForm" in forms:
                if login_posted:
                    raise ProviderError(f"login failed for {username!r}: {response.text[:500]}")
                login = forms["loginForm"]
                form = dict(login["fields"], username=username, password=password)
                url, method = urljoin(url, login["action"]), "POST"
                login_posted = True
                continue
            if "consentForm" in forms:
                consent = forms["consentForm"]
                url, method, form = urljoin(url, consent["action"]), "POST", consent["fields"]
                continue
            raise ProviderError(f"unexpected page at {url}: {response.text[:500]}")
        raise ProviderError(f"too many redirects from {authorize_url}")

    def _is_provider_url(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme == "https" and parts.port == self.port

    # ---- test admin API ----

    def admin_logout(self, tenant: str, username: str) -> dict[str, Any]:
        """End every provider session of ``username``; back-channel logouts are sent."""
        query = urlencode({"tenant": tenant, "username": username})
        response = self.request("POST", f"{self.base_url}/_test/logout?{query}")
        if response.status != 200:
            raise ProviderError(f"admin logout -> {response.status}: {response.text}")
        return response.json()

    def logout_token(self, tenant: str = SUPER_TENANT, **claims: str) -> str:
        """A back-channel logout token signed with the tenant's key: ``client_id``
        (its aud), and any of ``username`` (its sub), ``sub``, ``sid``, ``kid``."""
        query = urlencode({"tenant": tenant, **claims})
        response = self.request("POST", f"{self.base_url}/_test/logout_token?{query}")
        if response.status != 200:
            raise ProviderError(f"logout token -> {response.status}: {response.text}")
        return str(response.json()["logout_token"])

    def rotate_keys(self, tenant: str = SUPER_TENANT, drop_old: bool = False) -> dict[str, Any]:
        """Give ``tenant`` a new signing key (new kid); sessions and tokens survive.

        The old key stays in the JWKS after the new one unless ``drop_old``.
        Returns {"kid", "previous_kid", "published"}.
        """
        query = urlencode({"tenant": tenant, **({"drop_old": "1"} if drop_old else {})})
        response = self.request("POST", f"{self.base_url}/_test/rotate_keys?{query}")
        if response.status != 200:
            raise ProviderError(f"key rotation -> {response.status}: {response.text}")
        return response.json()

    def sessions(self, tenant: str = SUPER_TENANT) -> list[dict[str, Any]]:
        query = urlencode({"tenant": tenant})
        return self.get_json(f"{self.base_url}/_test/sessions?{query}")["sessions"]


@contextlib.contextmanager
def running_provider(
    workdir: Path, config: dict[str, Any] | None = None, **kwargs: Any
) -> Iterator[ProviderProcess]:
    provider = ProviderProcess(workdir, config, **kwargs)
    with provider:
        yield provider


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    return verifier, challenge
