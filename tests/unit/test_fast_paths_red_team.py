"""In-memory attacks on the fast paths: what the wire tests cannot aim as sharply.

``proxy.headers.on_site_location``: every spelling a browser reads as a
network-path reference (``//host``) is made a path of this site; everything
else passes as the upstream wrote it. The same for a ``Refresh`` header's URL
(``on_site_refresh``), which browsers follow as a redirect.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin

import pytest

from idgateway.proxy.headers import (
    on_site_location,
    on_site_refresh,
    response_headers_to_forward,
)

SITE = "https://app.example/dir/page"


def browser_target(location: bytes) -> str:
    """Where a browser on SITE goes for ``location`` (the WHATWG URL reading:
    C0 controls and spaces trimmed, tab/LF/CR dropped, ``\\`` a ``/``)."""
    text = location.decode("latin-1").strip("".join(map(chr, range(0x21))))
    text = text.replace("\t", "").replace("\n", "").replace("\r", "").replace("\\", "/")
    if text.startswith("//"):
        # (An http(s) URL's authority follows any number of slashes.)
        return "https://" + text.lstrip("/")
    return urljoin(SITE, text)


OFF_SITE = [
    pytest.param(b"//evil.example/x/", id="double-slash"),
    pytest.param(b"//evil.example", id="double-slash-bare"),
    pytest.param(b"/\\evil.example/x", id="slash-backslash"),
    pytest.param(b"\\/evil.example/x", id="backslash-slash"),
    pytest.param(b"\\\\evil.example/x", id="two-backslashes"),
    pytest.param(b"///evil.example/x", id="three-slashes"),
    pytest.param(b" //evil.example/x", id="leading-space"),
    pytest.param(b"\x00\x1f//evil.example/x", id="leading-controls"),
    pytest.param(b"/\t/evil.example/x", id="tab-between"),
    pytest.param(b"/" + b"\t" * 40 + b"/evil.example/x", id="many-tabs-between"),
    pytest.param(b"\t/\n/\revil.example/x", id="tab-lf-cr"),
    pytest.param(b"//evil.example@app.example/x", id="userinfo"),
    pytest.param(b"//app.example.evil.example/x", id="lookalike"),
]


@pytest.mark.parametrize("location", OFF_SITE)
def test_a_network_path_location_stays_on_site(location: bytes) -> None:
    # As the upstream wrote it, the browser leaves the site.
    assert not browser_target(location).startswith("https://app.example/")
    kept = on_site_location(location)
    assert browser_target(kept).startswith("https://app.example/"), kept
    # The path the upstream meant is kept, under this host.
    assert kept.endswith(location.lstrip(bytes(range(0x21))))


UNCHANGED = [
    pytest.param(b"/app/next", id="path"),
    pytest.param(b"/", id="root"),
    pytest.param(b"next?a=//b", id="relative"),
    pytest.param(b"?q=1", id="query"),
    pytest.param(b"https://idp.example/login", id="absolute-elsewhere"),
    pytest.param(b"https://app.example/x", id="absolute-here"),
    pytest.param(b"/x//y", id="double-slash-inside"),
    pytest.param(b"", id="empty"),
    pytest.param(b"/", id="one-slash"),
]


@pytest.mark.parametrize("location", UNCHANGED)
def test_other_locations_pass_as_written(location: bytes) -> None:
    assert on_site_location(location) is location


def test_the_forwarded_response_headers_carry_the_on_site_location() -> None:
    headers = [(b"Location", b"//evil.example/dir/"), (b"X-Other", b"//evil.example/")]
    assert response_headers_to_forward(headers) == [
        (b"Location", b"/.//evil.example/dir/"),
        (b"X-Other", b"//evil.example/"),
    ]


# ---- Refresh: browsers follow its URL as a redirect --------------------------------------

# How a browser finds a Refresh header's URL (WHATWG HTML, shared declarative
# refresh steps), written independently of the gateway's reader.
_REFRESH_URL = re.compile(
    rb"^[ \t\n\x0c\r]*[0-9.]*[ \t\n\x0c\r]*[;,]?[ \t\n\x0c\r]*"
    rb"(?:url[ \t\n\x0c\r]*=[ \t\n\x0c\r]*)?['\"]?(.*)$",
    re.IGNORECASE | re.DOTALL,
)


def refresh_target(refresh: bytes) -> str:
    match = _REFRESH_URL.match(refresh)
    assert match is not None
    url = match.group(1)
    # (A quoted URL ends at its closing quote; what follows is not read.)
    if refresh[match.start(1) - 1 : match.start(1)] in (b"'", b'"'):
        url = url.split(refresh[match.start(1) - 1 : match.start(1)])[0]
    return browser_target(url)


OFF_SITE_REFRESH = [
    pytest.param(b"0; url=//evil.example/x", id="url-equals"),
    pytest.param(b"0;URL=//evil.example/x", id="upper-case"),
    pytest.param(b"0, url = '//evil.example/x'", id="comma-spaces-quoted"),
    pytest.param(b'5;url="/\\evil.example/x"', id="double-quoted-backslash"),
    pytest.param(b"0; //evil.example/x", id="no-url-word"),
    pytest.param(b" 0 ;\turl=\t//evil.example/x", id="whitespace-everywhere"),
    pytest.param(b"0.5; url=\x01//evil.example/x", id="control-before"),
    pytest.param(b"0;url=/\t/evil.example/x", id="tab-between"),
    pytest.param(b"0;url=\\\\evil.example/x", id="two-backslashes"),
]


@pytest.mark.parametrize("refresh", OFF_SITE_REFRESH)
def test_a_network_path_refresh_url_stays_on_site(refresh: bytes) -> None:
    assert not refresh_target(refresh).startswith("https://app.example/")
    kept = on_site_refresh(refresh)
    assert refresh_target(kept).startswith("https://app.example/"), kept
    assert b"evil.example/x" in kept  # the path the upstream meant, on this site


UNCHANGED_REFRESH = [
    pytest.param(b"5", id="delay-only"),
    pytest.param(b"0; url=/next", id="path"),
    pytest.param(b"0; url=https://idp.example/login", id="absolute"),
    pytest.param(b"0; url=next//x", id="relative"),
    pytest.param(b"3;url=relative", id="relative-no-slash"),
    pytest.param(b"0; urlx=//evil.example", id="not-the-url-word"),
]


@pytest.mark.parametrize("refresh", UNCHANGED_REFRESH)
def test_other_refresh_values_pass_as_written(refresh: bytes) -> None:
    assert on_site_refresh(refresh) is refresh


def test_the_forwarded_response_headers_carry_the_on_site_refresh() -> None:
    headers = [(b"Refresh", b"0; url=//evil.example/"), (b"X-Refresh", b"0; url=//e/")]
    assert response_headers_to_forward(headers) == [
        (b"Refresh", b"0; url=/.//evil.example/"),
        (b"X-Refresh", b"0; url=//e/"),
    ]
