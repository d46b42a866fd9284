"""A real browser for end-to-end tests: Debian's Chromium driven by Playwright.

    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, trusted_certs=[op.leaf.cert_path])
        context = new_context(browser)      # one fresh context per test
        page = context.new_page()

Only the system Chromium (``/usr/bin/chromium``, Debian's ``chromium`` package)
is used; Playwright's own browser downloads are never needed. Without it, or
without the ``playwright`` Python package, the calling test is skipped.

Certificates: the test provider serves HTTPS with a certificate from a CA made
for the test. Chromium is told to accept exactly that certificate with
``--ignore-certificate-errors-spki-list`` (the base64 SHA-256 of its public key),
so every other certificate error still fails the page. Playwright's
``ignore_https_errors=True`` is not used: it applies to a whole context, every
origin at once, and would hide a TLS mistake anywhere else.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

CHROMIUM = "/usr/bin/chromium"

# As root Chromium refuses to start without --no-sandbox. The rest keeps it from
# reaching out to Google services (component updates, sync, field trials, QUIC
# probes...), which on this machine's closed network only produce retries.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def require_chromium() -> None:
    """Skip the calling test unless the system Chromium and Playwright are there."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (Debian package 'chromium'); browser tests need it")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the 'playwright' Python package is not installed")


def spki_sha256(cert_path: Path | str) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the first certificate in a PEM file.

    The first certificate is the leaf when the file is a chain (leaf, then CA).
    This is the value ``--ignore-certificate-errors-spki-list`` takes.
    """
    certificate = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())[0]
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def launch_chromium(
    playwright: Playwright, trusted_certs: Iterable[Path | str] = (), **kwargs: Any
) -> Browser:
    """Start headless /usr/bin/chromium; skip the test when it is not installed.

    ``trusted_certs``: PEM files whose (first) certificate Chromium accepts even
    though no trusted CA signed it, pinned by public key; nothing else is relaxed.
    """
    require_chromium()
    args = list(CHROMIUM_ARGS)
    pins = [spki_sha256(path) for path in trusted_certs]
    if pins:
        args.append("--ignore-certificate-errors-spki-list=" + ",".join(pins))
    args.extend(kwargs.pop("args", []))
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args, **kwargs)


def new_context(browser: Browser, **kwargs: Any) -> BrowserContext:
    """A fresh context (own cookies, own cache) with certificate errors enforced."""
    kwargs.setdefault("ignore_https_errors", False)
    kwargs.setdefault("viewport", {"width": 1024, "height": 768})
    return browser.new_context(**kwargs)


def describe(page: Page) -> str:
    """Where a page is and what it shows, for assertion messages."""
    try:
        text = page.locator("body").inner_text(timeout=1000)
    except Exception as error:  # a page mid-navigation or closed
        text = f"<no body: {error.__class__.__name__}>"
    return f"page.url={page.url}\npage text:\n{text[:1500]}"
