"""Browser acceptance tests: Chromium logs in through the gateway and the WSO2-shaped provider.

The same set-up as test_login.py (real gateway under twistd, real provider with two
tenants, real echo back end), but every step is a real browser's: redirects,
cookies (SameSite, Secure, per-host), the provider's HTML login form, tabs.
The echo back end answers JSON, which Chromium shows as text; the tests read
the identity headers from that rendered page.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser import describe, launch_chromium, new_context, require_chromium
from tests.http_helpers import header_values
from tests.http_helpers import request as http_request
from tests.login_env import (
    APP1_SECRET,
    APP2_SECRET,
    session_key,
    two_tenant_config,
    two_tenant_gateway_yaml,
)
from tests.processes import GatewayProcess, free_port
from tests.provider_process import ProviderProcess, node_binary

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed")

TIMEOUT_MS = 15_000
LOGIN_PAGE = "/authenticationendpoint/login.do"


def short(text: str, limit: int = 240) -> str:
    """Long lines (URLs with ID tokens in them) cut down for failure messages."""
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text) - limit} more]"


@dataclass
class Environment:
    op: ProviderProcess
    gateway: GatewayProcess
    port: int

    def app(self, name: str, path: str = "/") -> str:
        return f"http://{name}.localhost:{self.port}{path}"

    def is_login_page(self, url: str) -> bool:
        return url.startswith(self.op.base_url + "/") and LOGIN_PAGE in url

    def logs(self, lines: int = 40) -> str:
        gateway = "\n".join(
            short(line, 400) for line in self.gateway.output().splitlines()[-lines:]
        )
        provider = "\n".join(short(line) for line in self.op.output().splitlines()[-15:])
        return f"--- gateway log (tail) ---\n{gateway}\n--- provider log (tail) ---\n{provider}"

    def explain(self, *pages: Page) -> str:
        return "\n".join([*(describe(page) for page in pages), self.logs()])


@contextlib.contextmanager
def explained(env: Environment, *pages: Page) -> Iterator[None]:
    """Turn any failure (a Playwright timeout too) into one that shows where the
    browser was, what it showed, and the tail of the gateway's log."""
    try:
        yield
    except Exception as error:
        raise AssertionError(f"{error}\n{env.explain(*pages)}") from error


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    from tests.backends import BackendProcess

    tmp = tmp_path_factory.mktemp("browser")
    port = free_port()
    config = two_tenant_config(port)
    with ProviderProcess(tmp / "op", config) as op, BackendProcess(name="echo") as backend:
        (tmp / "app2-secret").write_text(APP2_SECRET + "\n")
        gateway_config = tmp / "gateway.yaml"
        gateway_config.write_text(
            two_tenant_gateway_yaml(
                port,
                op,
                backend.port,
                tmp / "app2-secret",
                session_key(),
                app1_scopes="[openid, email, profile, groups]",
                app1_headers="oauth2-proxy",
                app2_headers="mod_auth_openidc",
            )
        )
        env = {"APP1_CLIENT_SECRET": APP1_SECRET, "APP1_SESSION_KEY": session_key()}
        gateway = GatewayProcess(gateway_config, tmp / "gateway.log", env=env).start([port])
        try:
            environment = Environment(op, gateway, port)
            _wait_ready(environment)
            yield environment
        finally:
            gateway.stop()


def _wait_ready(env: Environment) -> None:
    """Discovery runs in the background; wait until both routes offer a login redirect."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        statuses = [
            http_request(env.port, f"{app}.localhost:{env.port}", "/")[0]
            for app in ("app1", "app2")
        ]
        if statuses == [302, 302]:
            return
        time.sleep(0.2)
    raise AssertionError(f"providers were not discovered in time\n{env.logs()}")


@pytest.fixture(scope="module")
def browser(environment: Environment) -> Iterator[Browser]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    assert environment.op.leaf is not None
    with sync_playwright() as playwright:
        # Pin the provider's own certificate (its public key); see tests/browser.py.
        chromium = launch_chromium(playwright, trusted_certs=[environment.op.leaf.cert_path])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = new_context(browser)
    ctx.set_default_timeout(TIMEOUT_MS)
    ctx.set_default_navigation_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


# ---- steps ----


def goto_login_page(env: Environment, page: Page, url: str) -> None:
    """Open a protected URL and expect to be sent to the provider's login page."""
    with explained(env, page):
        page.goto(url)
        page.wait_for_selector("input[name=username]")
        assert env.is_login_page(page.url), f"{url} did not lead to the provider's login page"


def submit_login(env: Environment, page: Page, username: str, password: str, lands_on: str) -> None:
    """Fill the login form on the provider's page and land back on ``lands_on``."""
    with explained(env, page):
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", password)
        page.click("#login-submit")
        page.wait_for_url(lands_on)
        page.wait_for_load_state("load")


def login(env: Environment, page: Page, url: str, username: str, password: str) -> None:
    goto_login_page(env, page, url)
    submit_login(env, page, username, password, url)


def echo(env: Environment, page: Page) -> dict[str, Any]:
    """The echo back end's answer as the browser shows it (JSON rendered as text)."""
    with explained(env, page):
        text = page.locator("pre").first.inner_text() if page.locator("pre").count() else ""
        text = text or page.locator("body").inner_text()
        try:
            return json.loads(text)
        except ValueError:
            raise AssertionError("the page is not the echo back end's answer") from None


def app_cookies(context: BrowserContext, host: str) -> list[dict[str, Any]]:
    return [dict(c) for c in context.cookies() if c["domain"].lstrip(".") == host]


# ---- tests ----


def test_login_to_app1_on_the_super_tenant(
    environment: Environment, context: BrowserContext, tmp_path: Path
) -> None:
    env = environment
    page = context.new_page()
    url = env.app("app1", "/hello")
    goto_login_page(env, page, url)
    assert "app1-client (carbon.super)" in page.inner_text("#app-name"), env.explain(page)
    submit_login(env, page, "alice", "alice123", url)

    answer = echo(env, page)
    assert answer["path"] == "/hello", env.explain(page)
    assert header_values(answer, "x-forwarded-user") == ["alice"], env.explain(page)
    assert header_values(answer, "x-forwarded-email") == ["alice@example.com"], env.explain(page)
    # The browser holds the gateway's cookies; the upstream never sees them.
    session = {c["name"]: c for c in app_cookies(context, "app1.localhost")}.get("_idgw_app1")
    assert session, f"no _idgw_app1 cookie after login: {context.cookies()}"
    assert session["httpOnly"] and session["sameSite"] in ("Lax", "Strict"), session
    assert not any(name.startswith(("_idgw", "__Host-_idgw")) for name in answer["cookies"])

    shot = tmp_path / "app1-hello.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sign_out_ends_the_provider_session_too(
    environment: Environment, context: BrowserContext
) -> None:
    env = environment
    page = context.new_page()
    login(env, page, env.app("app1", "/hello"), "alice", "alice123")

    sessions_before = {s["id"] for s in env.op.sessions()}
    navigations: list[str] = []
    page.on(
        "request",
        lambda r: (
            navigations.append(r.url)
            if r.is_navigation_request() and r.frame == page.main_frame
            else None
        ),
    )
    with explained(env, page):
        page.goto(env.app("app1", "/oauth2/sign_out"))
        page.wait_for_load_state("load")
    trail = "\n  ".join(short(u) for u in navigations)
    why = f"navigations:\n  {trail}\n{env.explain(page)}"
    logout = [u for u in navigations if u.startswith(env.op.base_url + "/oidc/logout?")]
    assert logout, f"sign_out did not go through the provider's /oidc/logout\n{why}"
    assert "id_token_hint=" in logout[0], why
    after = navigations[navigations.index(logout[0]) + 1 :]
    # The post_logout_redirect_uri, with the provider's ?state=... echoed back.
    assert after and after[0].split("?")[0] == env.app("app1", "/"), (
        f"the provider did not send the browser to the post-logout URL\n{why}"
    )
    # There the gateway says so, instead of starting a new login at once.
    assert "You are signed out" in page.content(), why

    # The provider session is over as well: no silent single sign-on, a login page.
    assert sessions_before - {s["id"] for s in env.op.sessions()}, (
        f"no provider session ended: {env.op.sessions()}\n{why}"
    )
    goto_login_page(env, page, env.app("app1", "/hello"))


def test_logout_at_the_provider_ends_the_gateway_session(
    environment: Environment, context: BrowserContext
) -> None:
    """Back-channel logout: the provider ends alice's session and POSTs a logout
    token to the gateway; the browser's next request lands on the login page."""
    env = environment
    page = context.new_page()
    url = env.app("app1", "/hello")
    login(env, page, url, "bob", "bob123")
    assert echo(env, page)["path"] == "/hello", env.explain(page)
    env.op.admin_logout("carbon.super", "bob")
    deadline = time.monotonic() + 5
    while True:
        with explained(env, page):
            page.goto(url)
            page.wait_for_load_state("load")
        if page.url.startswith(env.op.base_url):
            break  # sent to the provider to sign in again
        assert time.monotonic() < deadline, f"the session survived the logout\n{env.explain(page)}"
        time.sleep(0.2)
    assert page.locator("input[name=username]").count() == 1, env.explain(page)


def test_login_to_app2_on_the_second_tenant(
    environment: Environment, context: BrowserContext
) -> None:
    env = environment
    page = context.new_page()
    url = env.app("app2", "/hello")
    goto_login_page(env, page, url)
    assert "/t/acme.com/" in page.url or "tenantDomain=acme.com" in page.url, env.explain(page)
    assert "app2-client (acme.com)" in page.inner_text("#app-name"), env.explain(page)
    submit_login(env, page, "carol", "carol123", url)
    answer = echo(env, page)
    assert header_values(answer, "x-remote-user") == ["carol"], env.explain(page)
    assert not header_values(answer, "x-forwarded-user"), env.explain(page)


def test_app1_cookies_do_not_open_app2(
    environment: Environment, browser: Browser, context: BrowserContext
) -> None:
    env = environment
    page = context.new_page()
    login(env, page, env.app("app1", "/hello"), "alice", "alice123")
    stolen = app_cookies(context, "app1.localhost")
    names = [c["name"] for c in stolen]
    assert "_idgw_app1" in names, f"app1's session cookie is not _idgw_app1: {names}"

    def planted(renames: dict[str, str]) -> list[dict[str, Any]]:
        cookies = []
        for cookie in stolen:
            moved = {k: v for k, v in cookie.items() if k not in ("domain", "partitionKey")}
            moved["name"] = renames.get(cookie["name"], cookie["name"])
            moved["domain"] = "app2.localhost"
            cookies.append(moved)
        return cookies

    # As taken (same names and values), then renamed to app2's own session cookie
    # name, so that app2 really tries to open app1's sealed session.
    for renames in ({}, {"_idgw_app1": "_idgw_app2"}):
        other = new_context(browser)
        try:
            other.set_default_timeout(TIMEOUT_MS)
            other.add_cookies(planted(renames))  # type: ignore[arg-type]
            intruder = other.new_page()
            goto_login_page(env, intruder, env.app("app2", "/hello"))
            assert "app2-client (acme.com)" in intruder.inner_text("#app-name"), env.explain(
                intruder
            )
        finally:
            other.close()


def test_two_tabs_logging_in_at_once(environment: Environment, context: BrowserContext) -> None:
    env = environment
    tab_a = context.new_page()
    tab_b = context.new_page()
    goto_login_page(env, tab_a, env.app("app1", "/a"))
    goto_login_page(env, tab_b, env.app("app1", "/b"))
    assert tab_a.url != tab_b.url, "both tabs show the same login request"
    flows = [c["name"] for c in app_cookies(context, "app1.localhost")]
    assert len(set(flows)) == 2, f"expected one flow cookie per login, got {flows}"

    # B finishes first, then A: each login has its own flow cookie, so neither
    # overwrites the other and each tab ends where it started.
    submit_login(env, tab_b, "alice", "alice123", env.app("app1", "/b"))
    submit_login(env, tab_a, "alice", "alice123", env.app("app1", "/a"))
    for tab, path in ((tab_a, "/a"), (tab_b, "/b")):
        answer = echo(env, tab)
        assert answer["path"] == path, env.explain(tab)
        assert header_values(answer, "x-forwarded-user") == ["alice"], env.explain(tab)
    # Both flow cookies were used up; only the session cookie is left.
    left = [c["name"] for c in app_cookies(context, "app1.localhost")]
    assert left == ["_idgw_app1"], f"app1 cookies after both logins: {left}"
