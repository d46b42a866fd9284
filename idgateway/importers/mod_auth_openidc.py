"""``idgateway import mod_auth_openidc FILE.conf``: Apache with mod_auth_openidc.

The Apache file is read as Apache does: one directive per line (a trailing
``\\`` continues it), arguments split at blanks with ``"..."`` quoting, ``#``
comments on lines of their own, ``<Section args>`` blocks. ``<IfModule>`` and
its kind are opened (their content counts), ``Include`` is followed within
limits and takes only known directives from the files it reads (``_includes``).
Each ``<VirtualHost>`` with a ``ProxyPass`` or an OpenID Connect
login becomes a route; directives of the main server apply to every virtual
host, as in Apache. Without virtual hosts, the main server is the route.

mod_auth_openidc's defaults matter as much as the file: it asks only for the
``openid`` scope, ends idle sessions after 300 s and every session after 8 h,
asks the userinfo endpoint when the provider has one, and passes the access
token in ``OIDC_access_token``. The import writes those out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from urllib.parse import parse_qsl

import attrs

from idgateway.config import values as value_syntax
from idgateway.config.regex import not_starting_with
from idgateway.importers._includes import IncludeError, IncludeState, included_paths
from idgateway.importers._yaml import Block, Flow, config_text, quoted, shown
from idgateway.importers._yaml import reference as env_reference
from idgateway.importers.common import (
    ImporterError,
    ImportOptions,
    Report,
    duration_text,
    env_prefix,
    finish,
    hide_url_password,
    is_secret_name,
    provider_block,
    read_source,
    route_name,
    split_url,
    tls_self_signed_hint,
)

KIND = "mod_auth_openidc"
_TRANSPARENT = {"ifmodule", "ifdefine", "ifversion", "iffile", "ifdirective", "ifsection"}
_RESERVED_PARAMS = {
    "response_type", "response_mode", "client_id", "redirect_uri", "scope", "state",
    "nonce", "code_challenge", "code_challenge_method", "request", "request_uri",
}  # fmt: skip
_ENV_REFERENCE = re.compile(r"\A\$\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")
# A word shown as it is in a comment; anything else is double-quoted by PyYAML.
_BARE_WORD = re.compile(r"[^\s\"'\\#]+")

# mod_auth_openidc directives with no counterpart, and why (lower-case names).
_NO_EQUIVALENT: dict[str, str] = {
    "oidcproviderauthorizationendpoint": "taken from the discovery document",
    "oidcprovidertokenendpoint": "taken from the discovery document",
    "oidcproviderjwksuri": "taken from the discovery document",
    "oidcproviderendsessionendpoint": "taken from the discovery document",
    "oidcproviderrevocationendpoint": "taken from the discovery document",
    "oidcprovidercheckSessioniframe".lower(): "taken from the discovery document",
    "oidcproviderregistrationendpointjson": "no dynamic client registration",
    "oidcproviderbackchannellogoutsupported": (
        "back-channel logout is always served, at /oauth2/backchannel_logout"
    ),
    "oidcproviderverifycertfiles": "the signing keys come from the provider's JWKS",
    "oidcprovidersignedjwksuri": "the signing keys come from the provider's JWKS",
    "oidcprovidertokenendpointparams": "no extra token request parameters",
    "oidcproviderauthrequestmethod": "authorization requests are always GET redirects",
    "oidcmetadatadir": "one provider per providers entry; list each WSO2 tenant there",
    "oidcvalidateissuer": "the ID token's issuer is always checked",
    "oidcidtokeniatslack": "the gateway's clock-skew allowance is fixed",
    "oidcidtokensignedresponsealg": "the algorithms are those WSO2 advertises; never none or HMAC",
    "oidcidtokenencryptedresponsealg": "encrypted ID tokens are not supported",
    "oidcidtokenencryptedresponseenc": "encrypted ID tokens are not supported",
    "oidcidtokenaudvalues": "the ID token's aud must hold the client id",
    "oidcuserinfosignedresponsealg": "signed userinfo responses are not supported",
    "oidcuserinfoencryptedresponsealg": "encrypted userinfo responses are not supported",
    "oidcuserinforefreshinterval": "userinfo is asked once, at login",
    "oidcuserinfotokenmethod": "userinfo is asked with an Authorization: Bearer header",
    "oidcuserinfoclaimsexpr": "no claim filters",
    "oidcfilterclaimsexpr": "no claim filters",
    "oidcwhitelistedclaims": "no claim filters: every claim is passed",
    "oidcblacklistedclaims": "no claim filters: every claim is passed",
    "oidcpassrefreshtoken": "the refresh token is never passed to the application",
    "oidcpassuserinfoas": "userinfo claims (with oidc.userinfo) are passed as claim headers",
    "oidcdefaulturl": "after a failed login the gateway shows an error page",
    "oidcdiscoverurl": "no provider discovery page: each route names its provider",
    "oidcunautzaction": "a refused user gets 403",
    "oidcstatetimeout": "the flow cookie lasts as long as a login may take",
    "oidcstatemaxnumberofcookies": "the gateway keeps its flow cookies in check itself",
    "oidcstatecookieprefix": "flow cookies are named by the gateway",
    "oidchttptimeoutlong": "every call to the provider has a 10 s deadline",
    "oidchttptimeoutshort": "every call to the provider has a 10 s deadline",
    "oidcoutgoingproxy": "no outgoing proxy for calls to the provider",
    "oidcjwksrefreshinterval": "keys are refreshed hourly and at once for an unknown kid",
    "oidcpathscope": "scopes are per route",
    "oidcpathauthrequestparams": "authorization parameters are per route (oidc.extra_params)",
    "oidcpasscookies": "no cookies are sent to the provider",
    "oidcsessioncachefallbacktocookie": "with store: redis, Redis trouble answers 503",
    "oidccacheencrypt": "Redis sessions are always encrypted",
    "oidccacheshmmax": "no shared-memory cache",
    "oidccacheshmentrysizemax": "no shared-memory cache",
    "oidccachedir": "no file cache",
    "oidccachefilecleaninterval": "no file cache",
    "oidcmemcacheservers": "no memcache; use session store: redis",
    "oidcredisacheusername": "Redis ACL user names are not supported",
    "oidcrediscacheusername": "Redis ACL user names are not supported",
    "oidcprivatekeyfiles": "no private_key_jwt client authentication",
    "oidcpublickeyfiles": "no private_key_jwt client authentication",
    "oidcclienttokenendpointcert": "no mutual-TLS client authentication",
    "oidcclienttokenendpointkey": "no mutual-TLS client authentication",
    "oidcclienttokenendpointkeypassword": "no mutual-TLS client authentication",
    "oidcclientname": "no dynamic client registration",
    "oidcclientcontact": "no dynamic client registration",
    "oidcclientjwksuri": "no dynamic client registration",
    "oidcdpopmode": "DPoP is not supported",
    "oidccertboundaccesstokens": "certificate-bound tokens are not supported",
    "oidcprofile": "the gateway follows OpenID Connect Core with PKCE",
    "oidcresponsemode": "the response always comes back as query parameters",
    "oidcinfohook": "/oauth2/userinfo answers with the session as JSON",
    "oidcxforwardedheaders": (
        "X-Forwarded-* headers are believed from the addresses in trusted_proxies only: "
        "list your proxy's there"
    ),
    "oidclogoutrequestparams": "the end-session request carries id_token_hint, state, client_id",
}
_APACHE: dict[str, str] = {
    "loadmodule": "the gateway has OpenID Connect and proxying built in",
    "documentroot": "the gateway serves no files",
    "errorlog": "the gateway logs through twistd (--logfile)",
    "customlog": "the gateway logs through twistd (--logfile)",
    "loglevel": "the gateway logs through twistd",
    "serveradmin": "no server signature pages",
    "proxyrequests": "the gateway is never a forward proxy",
    "proxypassreverse": (
        "the gateway does not rewrite Location headers; with preserve_host: true the "
        "application sees the public host name and can build its own URLs"
    ),
    "proxypassreversecookiedomain": "cookies from the application pass unchanged",
    "proxypassreversecookiepath": "cookies from the application pass unchanged",
    "proxypassmatch": "path prefixes only; see paths",
    "sslproxyverify": "upstream TLS is always verified; name its CA in upstream_ca_file",
    "sslproxycheckpeername": "upstream TLS is always verified, host name included",
    "sslproxycheckpeercn": "upstream TLS is always verified, host name included",
    "sslproxycheckpeerexpire": "upstream TLS is always verified",
    "sslhonorcipherorder": "the server's cipher order is OpenSSL's",
    "sslcompression": "TLS compression is never on",
    "sslsessiontickets": "the TLS session settings are OpenSSL's defaults",
    "header": "the gateway adds no response headers (see hsts for Strict-Transport-Security)",
    "requestheader": "the gateway adds no request headers besides the identity headers",
    "rewriteengine": "no rewriting",
    "rewriterule": "no rewriting",
    "rewritecond": "no rewriting",
    "redirect": "no redirects besides https_redirect",
    "options": "the gateway serves no files",
    "allowoverride": "no .htaccess files",
    "keepalive": "keep-alive is always on",
    "timeout": "see connect_timeout, response_timeout and idle_timeout",
}


# What an included file may contribute: the directives and sections this importer
# reads or names in its report. Anything else there is left out unseen.
_READ_DIRECTIVES = {
    "listen", "servername", "serveralias", "sslengine", "sslcertificatefile",
    "sslcertificatekeyfile", "sslcertificatechainfile", "sslprotocol", "sslciphersuite",
    "sslproxycacertificatefile", "sslproxyengine", "proxypass", "proxypreservehost",
    "proxytimeout", "authtype", "require", "oidcauthnheader", "oidcauthrequestparams",
    "oidccabundlepath", "oidccachetype", "oidcclaimdelimiter", "oidcclaimprefix",
    "oidcclientid", "oidcclientsecret", "oidccookie", "oidccookiedomain", "oidccookiepath",
    "oidccookiesamesite", "oidccookiehttponly", "oidccookiesecure", "oidccryptopassphrase",
    "oidcdefaultloggedouturl", "oidcpkcemethod", "oidcpassclaimsas", "oidcpassidtokenas",
    "oidcproviderissuer", "oidcprovidermetadataurl", "oidcprovidertokenendpointauth",
    "oidcprovideruserinfoendpoint", "oidcredirecturi", "oidcrediscachedatabase",
    "oidcrediscachepassword", "oidcrediscacheserver", "oidcrediscacheconnecttimeout",
    "oidcrediscachetimeout", "oidcrefreshaccesstokenbeforeexpiry", "oidcremoteuserclaim",
    "oidcresponsetype", "oidcsslvalidateserver", "oidcscope", "oidcsessiontype",
    "oidcsessioninactivitytimeout", "oidcsessionmaxduration", "oidcsessioncookiechunksize",
    "oidcstripcookies", "oidcunauthaction",
}  # fmt: skip
_KNOWN_DIRECTIVES = frozenset(_READ_DIRECTIVES | set(_NO_EQUIVALENT) | set(_APACHE))
_KNOWN_SECTIONS = frozenset(
    {"virtualhost", "location", "locationmatch", "directory", "directorymatch", "files",
     "filesmatch", "requireall", "requireany", "requirenone"}
)  # fmt: skip


# ---- reading the Apache file ------------------------------------------------------------


@attrs.define
class Directive:
    name: str
    args: list[str]
    line: int
    # Words after an unquoted '#': Apache takes them as arguments, not as a comment.
    trailing: str | None = None

    @property
    def key(self) -> str:
        return self.name.lower()

    def arg(self, index: int = 0, default: str = "") -> str:
        return self.args[index] if len(self.args) > index else default

    def show(self) -> str:
        if is_secret_name(self.name):
            return f"{shown(self.name)} <hidden>"
        words = [hide_url_password(arg) for arg in self.args]
        if self.key in ("oidcoutgoingproxy", "oidcprovidersignedjwksuri"):
            words = words[:1] + ["<hidden>"] * (len(words) > 1)
        # As Apache would read them back, on one line: quoted when not a bare word.
        text = " ".join(word if _BARE_WORD.fullmatch(word) else quoted(word) for word in words)
        return f"{shown(self.name)} {text}".rstrip()


@attrs.define
class Section:
    name: str
    args: list[str]
    line: int
    children: list[Directive | Section] = attrs.field(factory=list)

    @property
    def key(self) -> str:
        return self.name.lower()

    def show(self) -> str:
        words = [self.name, *self.args]
        text = " ".join(word if _BARE_WORD.fullmatch(word) else quoted(word) for word in words)
        return f"<{text}>"


# Apache splits arguments at C's isspace (ASCII); Python's str.isspace and
# str.splitlines also split at U+2028, U+0085, U+00A0...: a value Apache reads
# as one word must not become two here.
_APACHE_SPACE = " \t\n\v\f\r"
MAX_SECTION_DEPTH = 32
MAX_ROUTES = 200
MAX_LOCATIONS = 500
MAX_DIRECTIVES = 100_000


def _words(text: str) -> tuple[list[str], str | None]:
    """Apache's argument splitting; and what follows an unquoted '#', if anything."""
    words: list[str] = []
    position = 0
    while position < len(text):
        if text[position] in _APACHE_SPACE:
            position += 1
            continue
        if text[position] == "#" and words:
            return words, text[position:].strip(_APACHE_SPACE)
        if text[position] in "\"'":
            quote, position, word = text[position], position + 1, []
            while position < len(text) and text[position] != quote:
                if (
                    text[position] == "\\"
                    and position + 1 < len(text)
                    and text[position + 1] in "\"'\\"
                ):
                    position += 1
                word.append(text[position])
                position += 1
            words.append("".join(word))
            position += 1
            continue
        end = position
        while end < len(text) and text[end] not in _APACHE_SPACE:
            end += 1
        words.append(text[position:end])
        position = end
    return words, None


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(number, line) per directive line: split at LF only, as Apache does; '\\' continues."""
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        number = index + 1
        parts = [lines[index].strip(_APACHE_SPACE)]
        index += 1
        while parts[-1].endswith("\\") and index < len(lines):
            parts[-1] = parts[-1][:-1]
            parts.append(lines[index].strip(_APACHE_SPACE))
            index += 1
        yield number, " ".join(parts)


@attrs.define
class _ReadState(IncludeState):
    directives: int = 0
    locations: int = 0


def parse_apache(
    text: str,
    source: str,
    report: Report,
    state: _ReadState | None = None,
    *,
    included: bool = False,
) -> list[Directive | Section]:
    """The file's directives and sections, <IfModule> and the like opened, Includes followed.

    Of an ``included`` file only the directives and sections this importer knows
    are kept: whatever else it holds (a netrc someone's glob caught, a password
    file) is counted, never copied into the output, not even into a comment.
    """
    if state is None:
        state = _ReadState(chain=[os.path.realpath(source)])
    root = Section("root", [], 0)
    stack = [root]
    dropped = 0
    where = shown(source)
    for number, line in _logical_lines(text):
        if not line or line.startswith("#"):
            continue
        state.directives += 1
        if state.directives > MAX_DIRECTIVES:
            raise ImporterError(
                f"{where}:{number}: more than {MAX_DIRECTIVES} directives: not a configuration "
                "the importer reads"
            )
        if line.startswith("</"):
            name = line[2:].rstrip(">").strip(_APACHE_SPACE).lower()
            if len(stack) == 1 or stack[-1].key != name:
                raise ImporterError(
                    f"{where}:{number}: </{shown(name)}> closes no open <{shown(name)}>"
                )
            finished = stack.pop()
            if finished.key in _TRANSPARENT:
                stack[-1].children.extend(finished.children)
            elif included and finished.key not in _KNOWN_SECTIONS:
                dropped += 1 + len(_walk(finished.children))
            else:
                stack[-1].children.append(finished)
            continue
        if line.startswith("<"):
            if not line.endswith(">"):
                raise ImporterError(f"{where}:{number}: a section line must end with '>'")
            words, _ = _words(line[1:-1])
            if not words:
                raise ImporterError(f"{where}:{number}: an empty <> section")
            if len(stack) > MAX_SECTION_DEPTH:
                raise ImporterError(
                    f"{where}:{number}: sections nested more than {MAX_SECTION_DEPTH} deep"
                )
            section = Section(words[0], words[1:], number)
            if section.key in ("location", "locationmatch"):
                state.locations += 1
                if state.locations > MAX_LOCATIONS:
                    raise ImporterError(
                        f"{where}:{number}: more than {MAX_LOCATIONS} <Location> sections: "
                        "import the file of each application on its own"
                    )
            stack.append(section)
            continue
        words, trailing = _words(line)
        directive = Directive(words[0], words[1:], number, trailing)
        if directive.key in ("include", "includeoptional"):
            stack[-1].children.extend(_include(directive, source, report, state))
            continue
        if included and directive.key not in _KNOWN_DIRECTIVES:
            dropped += 1
            continue
        stack[-1].children.append(directive)
    if len(stack) > 1:
        raise ImporterError(
            f"{where}: <{shown(stack[-1].name)}> (line {stack[-1].line}) is never closed"
        )
    if dropped:
        report.skip(
            f"{dropped} line{'s' * (dropped > 1)} of the included file {where}",
            "not directives this importer reads; their text is left out of this file",
        )
    return root.children


def _include(
    directive: Directive, source: str, report: Report, state: _ReadState
) -> list[Directive | Section]:
    """The directives of the files an Include names (bounded: see _includes)."""
    where = f"{shown(source)}:{directive.line}"
    found: list[Directive | Section] = []
    try:
        if len(directive.args) != 1:
            raise IncludeError(f"{where}: {directive.name} takes one file name or pattern")
        paths = included_paths(
            directive.arg(),
            source,
            optional=directive.key == "includeoptional",
            where=where,
            state=state,
        )
        if not paths:
            report.skip(directive.show(), "no file matches it here; Apache starts without it")
        for path in paths:
            state.enter(path, where)
            try:
                found.extend(parse_apache(read_source(path), path, report, state, included=True))
            finally:
                state.leave()
    except IncludeError as error:
        raise ImporterError(str(error)) from None
    return found


# ---- the conversion ---------------------------------------------------------------------


@attrs.define
class _Host:
    """One virtual host (or the main server) with the directives that apply to it."""

    label: str
    address: str  # the VirtualHost address spec, e.g. *:8002
    directives: list[Directive]  # main server's first, then the host's own
    locations: list[Section]
    line: int
    used: set[int] = attrs.field(factory=set)  # id() of directives consumed

    def all(self, name: str) -> list[Directive]:
        found = [d for d in self.directives if d.key == name.lower()]
        self.used.update(id(d) for d in found)
        return found

    def last(self, name: str) -> Directive | None:
        found = self.all(name)
        return found[-1] if found else None

    def value(self, name: str, default: str | None = None) -> str | None:
        directive = self.last(name)
        return directive.arg() if directive else default

    def has(self, name: str) -> bool:
        return any(d.key == name.lower() for d in self.directives)


def convert(text: str, source: str, options: ImportOptions) -> str:
    report = Report(KIND, source)
    tree = parse_apache(text, source, report)
    everything = list(_walk(tree))
    if not any(
        re.fullmatch(r"oidc[a-z0-9]+", d.key) for d in everything if isinstance(d, Directive)
    ):
        raise ImporterError(
            f"{source} is not a mod_auth_openidc configuration: no OIDC... directive "
            "(expected OIDCProviderMetadataURL, OIDCClientID, OIDCRedirectURI...)"
        )
    global_directives = [d for d in tree if isinstance(d, Directive)]
    global_locations = [
        s for s in tree if isinstance(s, Section) and s.key in ("location", "locationmatch")
    ]
    # By identity: sections compare by value, and comparing every pair is quadratic.
    global_location_ids = {id(s) for s in global_locations}
    listens = [d for d in global_directives if d.key == "listen"]
    hosts: list[_Host] = []
    for section in tree:
        if isinstance(section, Section) and section.key == "virtualhost":
            own = [d for d in section.children if isinstance(d, Directive)]
            locations = [
                s
                for s in section.children
                if isinstance(s, Section) and s.key in ("location", "locationmatch")
            ]
            for other in section.children:
                if isinstance(other, Section) and not any(other is loc for loc in locations):
                    report.skip(f"{other.show()} (line {other.line})", _section_reason(other))
            hosts.append(
                _Host(
                    f"<VirtualHost {' '.join(section.args)}> (line {section.line})",
                    section.args[0] if section.args else "*",
                    [*global_directives, *own],
                    [*global_locations, *locations],
                    section.line,
                )
            )
        elif isinstance(section, Section) and id(section) not in global_location_ids:
            report.skip(f"{section.show()} (line {section.line})", _section_reason(section))
    if not hosts:
        port = None
        if listens:
            port = listens[0].arg()
        hosts.append(
            _Host(
                "the main server",
                f"*:{_port_of(port or '80')}",
                global_directives,
                global_locations,
                0,
            )
        )

    if sum(1 for host in hosts if _importable(host)) > MAX_ROUTES:
        raise ImporterError(
            f"{shown(source)}: more than {MAX_ROUTES} virtual hosts to import; import the "
            "file of each application on its own"
        )
    global_ids = {id(d) for d in global_directives}
    top = Block()
    listeners: dict[str, Block] = {}
    providers: dict[str, tuple[str, Block]] = {}
    routes: list[Block] = []
    env_used: set[str] = set()
    imported: list[_Host] = []
    for host in hosts:
        if not _importable(host):
            redirects_to_https = any(
                d.key == "redirect" and "https://" in " ".join(d.args) for d in host.directives
            )
            report.skip(
                host.label,
                "no ProxyPass and no OpenID Connect login: nothing for the gateway to do"
                + (
                    "; it redirects to HTTPS: add a plain listener and https_redirect: true "
                    "on the route"
                    if redirects_to_https
                    else ""
                ),
            )
            host.used.update(id(d) for d in host.directives if id(d) not in global_ids)
            continue
        imported.append(host)
        routes.append(
            _route(host, report, options, listens, listeners, providers, routes, env_used)
        )
    if not routes:
        raise ImporterError(f"{source}: no virtual host proxies to an application (ProxyPass)")
    if options.listen:
        if len(listeners) > 1:
            raise ImporterError(
                f"--listen: this configuration has {len(listeners)} listeners; give none"
            )
        listener = next(iter(listeners.values()))
        original = listener.get("address")
        listener.add("address", options.listen, f"--listen (the configuration: {original})")
    top.add("listeners", list(listeners.values()))
    provider_blocks = top.child("providers")
    for name, block in providers.values():
        provider_blocks.add(name, block)
    top.add("routes", routes)

    # Everything not consumed is reported, so nothing is silently lost.
    seen: set[int] = set()
    used = set().union(*(h.used for h in hosts))
    for host in imported or hosts:
        for directive in host.directives:
            if id(directive) in seen or id(directive) in used:
                continue
            seen.add(id(directive))
            report.skip(_where(directive, host, hosts), _reason(directive))
    return finish(top, report, options, _next_steps(providers))


def _walk(children: list[Directive | Section]) -> list[Directive | Section]:
    out: list[Directive | Section] = []
    for child in children:
        out.append(child)
        if isinstance(child, Section):
            out.extend(_walk(child.children))
    return out


def _section_reason(section: Section) -> str:
    if section.key in ("directory", "directorymatch", "files", "filesmatch"):
        return "the gateway protects URL paths, not files: see <Location>"
    if section.key in ("requireall", "requireany", "requirenone"):
        return "only a single Require rule per location is imported"
    return "a section the gateway has no counterpart for"


def _where(directive: Directive, host: _Host, hosts: list[_Host]) -> str:
    return directive.show() + (f" in {host.label}" if len(hosts) > 1 else "")


def _reason(directive: Directive) -> str:
    key = directive.key
    if key in _NO_EQUIVALENT:
        return _NO_EQUIVALENT[key]
    if key in _APACHE:
        return _APACHE[key]
    if key == "oidccookiesecure":
        return (
            "this directive does not exist in mod_auth_openidc 2.4.12 (Debian's): Apache "
            "refuses to start with it; the gateway marks cookies Secure on TLS listeners "
            "by itself"
            + (
                f". Note that Apache does not read '{directive.trailing}' as a comment: "
                "a comment must be on a line of its own"
                if directive.trailing
                else ""
            )
        )
    if key.startswith("oidcoauth"):
        return (
            "OAuth 2.0 resource server settings: give the route a bearer block by hand "
            "(provider, audiences, introspection; docs/apis.rst)"
        )
    if key.startswith("oidc"):
        return "a mod_auth_openidc directive this importer does not know; check it by hand"
    if key.startswith("ssl"):
        return "no counterpart among the listener's tls settings"
    return "an Apache directive the gateway has no counterpart for"


def _importable(host: _Host) -> bool:
    if any(d.key == "proxypass" for d in host.directives):
        return True
    for location in host.locations:
        for child in location.children:
            if isinstance(child, Directive) and (
                child.key == "proxypass"
                or (child.key == "authtype" and child.arg().lower() == "openid-connect")
            ):
                return True
    return False


def _port_of(text: str) -> int | None:
    match = re.search(r"(?:\A|:)(\d+)\Z", text.strip())
    return int(match.group(1)) if match else None


def _listener_address(host: _Host, listens: list[Directive], tls: bool) -> tuple[str, str]:
    """(address, where it came from) for the host's VirtualHost spec and the Listen lines."""
    spec = host.address
    port = _port_of(spec)
    ip = spec.rsplit(":", 1)[0] if ":" in spec and port else spec
    where = f"<VirtualHost {spec}>"
    if port is None:
        port = _port_of(listens[0].arg()) if listens else (443 if tls else 80)
    for listen in listens:
        if _port_of(listen.arg()) == port:
            listen_host = listen.arg().rsplit(":", 1)[0] if ":" in listen.arg() else ""
            where += f", Listen {listen.arg()}"
            if ip in ("*", "_default_", ""):
                ip = listen_host
            break
    if ip in ("*", "_default_", ""):
        ip = "0.0.0.0"
    return f"{ip}:{port}", where


def _route(
    host: _Host,
    report: Report,
    options: ImportOptions,
    listens: list[Directive],
    listeners: dict[str, Block],
    providers: dict[str, tuple[str, Block]],
    routes: list[Block],
    env_used: set[str],
) -> Block:
    route = Block()
    server_name = host.value("ServerName")
    scheme_host = None
    if server_name:
        _, scheme_host, _, _ = split_url(
            server_name if "://" in server_name else f"x://{server_name}"
        )
    names = {str(r.get("name")) for r in routes}
    name = route_name(scheme_host, "default")
    if name in names:
        name = f"{name}-{_port_of(host.address) or len(routes)}"
    route.add("name", name)
    hosts: list[str] = []
    for candidate in [scheme_host, *[a for d in host.all("ServerAlias") for a in d.args]]:
        if not candidate:
            continue
        try:
            hosts.append(value_syntax.parse_host_pattern(candidate))
        except ValueError as error:
            route.note(f"Host {candidate!r} left out: {error}")
    if hosts:
        route.add("hosts", list(dict.fromkeys(hosts)), "ServerName, ServerAlias")
    if not routes:
        route.add("default", True, "Apache's first virtual host answers unknown host names")

    # Listener (and TLS) for the host's address.
    tls = (host.value("SSLEngine", "off") or "off").lower() == "on"
    address, where = _listener_address(host, listens, tls)
    host.all("Listen")
    listener = listeners.get(address)
    if listener is None:
        listener = Block()
        listener.add("address", address, where)
        listeners[address] = listener
    if tls:
        _tls(host, report, listener)
    elif listener.get("tls") is not None:
        report.warnings.append(f"{host.label} is plain HTTP on {address}, where another is TLS.")

    _proxy(host, report, route)
    provider_name = _provider(host, report, providers)
    env = env_prefix(name)
    if env in env_used:
        env = f"{env}_{len(env_used)}"
    env_used.add(env)
    oidc = _oidc(host, report, options, route, provider_name, env, tls, address)
    route.add("oidc", oidc)
    route.add("session", _session(host, report, options, env))
    route.add("headers", _headers(host, report, route))
    _locations(host, report, route)
    return route


def _tls(host: _Host, report: Report, listener: Block) -> None:
    cert = host.value("SSLCertificateFile")
    key = host.value("SSLCertificateKeyFile") or cert
    tls = listener.child("tls")
    pairs = tls.get("certificates") or []
    if cert:
        pairs.append(Flow(cert=cert, key=key))
        tls.add("certificates", pairs, "SSLCertificateFile, SSLCertificateKeyFile")
    else:
        report.warnings.append(f"{host.label}: SSLEngine on without SSLCertificateFile.")
    chain = host.value("SSLCertificateChainFile")
    if chain:
        tls.note(
            f"SSLCertificateChainFile {chain}: append its certificates to {cert} (leaf first)."
        )
    protocol = host.last("SSLProtocol")
    if protocol:
        enabled = [a.lstrip("+") for a in protocol.args if not a.startswith("-")]
        disabled = [a[1:] for a in protocol.args if a.startswith("-")]
        versions = [
            v
            for v in ("TLSv1.2", "TLSv1.3")
            if v in enabled or ("all" in enabled and v not in disabled)
        ]
        if versions:
            tls.add("min_version", versions[0].removeprefix("TLSv"), "SSLProtocol")
    ciphers = host.value("SSLCipherSuite")
    if ciphers:
        try:
            tls.add("ciphers", value_syntax.parse_ciphers(ciphers), "SSLCipherSuite")
        except ValueError as error:
            report.skip(f"SSLCipherSuite {ciphers}", str(error))


def _proxy(host: _Host, report: Report, route: Block) -> None:
    """upstream and paths from ProxyPass (in the host and in <Location>s)."""
    rules: list[tuple[str, Directive, list[str]]] = []
    for directive in host.all("ProxyPass"):
        if len(directive.args) >= 2:
            rules.append((directive.arg(0), directive, directive.args[1:]))
        else:
            report.skip(f"{directive.show()}", "ProxyPass needs a path and a URL here")
    for location in host.locations:
        for child in location.children:
            if (
                isinstance(child, Directive)
                and child.key == "proxypass"
                and location.key == "location"
            ):
                rules.append((location.args[0] if location.args else "/", child, child.args))
    root: str | None = None
    paths: list[Block] = []
    timeouts: list[tuple[str, str, str]] = []
    for local, directive, args in rules:
        target, extra = args[0], args[1:]
        if target == "!":
            report.skip(
                directive.show(), f"Apache served {local} itself; the gateway proxies every path"
            )
            continue
        upstream, why = _upstream(local, target)
        if upstream is None:
            report.skip(directive.show(), why)
            continue
        for option in extra:
            name, _, value = option.partition("=")
            setting = {"timeout": "response_timeout", "connectiontimeout": "connect_timeout"}.get(
                name.lower()
            )
            if setting and local.rstrip("/") == "" and re.fullmatch(r"\d+", value):
                timeouts.append((setting, duration_text(float(value)), f"ProxyPass {name}="))
            elif setting:
                report.skip(
                    f"ProxyPass option {option} (line {directive.line})",
                    "timeouts are per route here: the route's own apply to every path",
                )
            else:
                report.skip(
                    f"ProxyPass option {option} (line {directive.line})", "not a gateway setting"
                )
        if local.rstrip("/") == "":
            root = root or upstream
        else:
            sub = Block()
            sub.add("prefix", local)
            sub.add("upstream", upstream)
            paths.append(sub)
    if root is None and paths:
        root = str(paths[0].get("upstream"))
        route.note(
            "No ProxyPass for /: other paths go to the first upstream (Apache served them itself)."
        )
    if root is None:
        root = "http://127.0.0.1:8080"
        route.note("No usable ProxyPass: this upstream is a placeholder.")
        report.warnings.append(
            f"{host.label} has no usable ProxyPass; the upstream is a placeholder."
        )
    route.add("upstream", root, "ProxyPass")
    if paths:
        route.add("paths", paths, "the other ProxyPass lines")
    for setting, value, where in timeouts:
        route.add(setting, value, where)
    if (host.value("ProxyPreserveHost", "off") or "off").lower() == "on":
        route.add("preserve_host", True, "ProxyPreserveHost On")
    timeout = host.value("ProxyTimeout")
    if timeout and timeout.isdigit():
        route.add("response_timeout", duration_text(float(timeout)), "ProxyTimeout")
    ca = host.value("SSLProxyCACertificateFile")
    if ca:
        route.add("upstream_ca_file", ca, "SSLProxyCACertificateFile")
    if host.has("SSLProxyEngine"):
        host.all("SSLProxyEngine")
        route.note("SSLProxyEngine: https:// upstreams need nothing more; their TLS is verified.")


def _upstream(local: str, target: str) -> tuple[str | None, str]:
    """The gateway upstream that sends local/x where Apache's ProxyPass did."""
    if target.lower().startswith("unix:"):
        socket_path = target[5:].split("|", 1)[0]
        return f"unix:{socket_path}", ""
    scheme, host, port, path = split_url(target)
    if scheme not in ("http", "https") or not host:
        return None, f"{target} is not an http(s) URL"
    origin = f"{scheme}://{host}" + (f":{port}" if port else "")
    local_part, remote = local.rstrip("/"), path.rstrip("/")
    if not remote.endswith(local_part):
        return None, (
            f"Apache sent {local}x to {target}x; the gateway keeps the path, so it would "
            f"reach {origin}{path.rstrip('/')}{local}x: give the application the same path"
        )
    base = remote[: len(remote) - len(local_part)] if local_part else remote
    url = origin + base
    try:
        value_syntax.parse_upstream_url(url)
    except ValueError as error:
        return None, str(error)
    return url, ""


def _provider(host: _Host, report: Report, providers: dict[str, tuple[str, Block]]) -> str:
    metadata = host.value("OIDCProviderMetadataURL")
    issuer = host.value("OIDCProviderIssuer")
    url = metadata or issuer
    if not url:
        raise ImporterError(
            f"{host.label}: no OIDCProviderMetadataURL (or OIDCProviderIssuer); with WSO2: "
            "OIDCProviderMetadataURL https://localhost:9443/oauth2/oidcdiscovery/.well-known/openid-configuration"
        )
    validate = (host.value("OIDCSSLValidateServer", "on") or "on").lower()
    ca_bundle = host.value("OIDCCABundlePath")
    signature = (url, validate, ca_bundle)
    key = repr(signature)
    if key in providers:
        return providers[key][0]
    name, provider = provider_block(
        url,
        discovery=bool(metadata),
        report=report,
        source="OIDCProviderMetadataURL" if metadata else "OIDCProviderIssuer",
    )
    if metadata and issuer:
        provider.note(f"OIDCProviderIssuer {issuer}: the issuer comes from the discovery document.")
    if ca_bundle:
        provider.add("ca_file", ca_bundle, "OIDCCABundlePath")
    if validate == "off":
        provider.note(
            "!!! OIDCSSLValidateServer Off: the provider's TLS certificate is NOT checked. "
            "Anyone on the network path can pose as WSO2, serve their own signing keys and "
            "sign in as anybody (and Debian's mod_auth_openidc 2.4.12 then even took an "
            "unsigned alg: none ID token; the gateway never does). The gateway warns about "
            "this at every start. Export WSO2's certificate, set ca_file, and remove "
            "insecure_skip_verify:"
        )
        provider.note("ca_file: /etc/idgateway/wso2carbon.pem")
        provider.add("insecure_skip_verify", True, "OIDCSSLValidateServer Off")
        report.warnings.append(
            "OIDCSSLValidateServer Off became insecure_skip_verify: true: TLS to the provider "
            "is not verified. Give ca_file (WSO2's certificate) instead."
        )
    tls_self_signed_hint(provider, url)
    taken = {n for n, _ in providers.values()}
    unique, count = name, 2
    while unique in taken:
        unique, count = f"{name}-{count}", count + 1
    providers[key] = (unique, provider)
    return unique


def _secret_value(
    directive: Directive | None, report: Report, options: ImportOptions, env: str, description: str
) -> tuple[str, str]:  # the value is literal text unless it is a ConfigText reference
    """(value, how) for a secret directive: a ${NAME} unless kept; how ends a comment."""
    value = directive.arg() if directive else ""
    reference = _ENV_REFERENCE.match(value)
    if reference:
        # Apache expanded ${NAME} from its environment (or a Define): the same variable.
        report.env[reference.group(1)] = f"{description} (as in the Apache configuration)"
        report.sample_env[reference.group(1)] = "placeholder-secret"
        return env_reference(reference.group(1)), ", from the environment (as in Apache)"
    if value and options.keep_secrets and not value.startswith("exec:"):
        return value, " (--keep-secrets)"
    return report.secret(env, description), ", from the environment"


def _oidc(
    host: _Host,
    report: Report,
    options: ImportOptions,
    route: Block,
    provider_name: str,
    env: str,
    tls: bool,
    address: str,
) -> Block:
    oidc = Block()
    oidc.add("provider", provider_name)
    client_id = host.value("OIDCClientID")
    if not client_id:
        raise ImporterError(
            f"{host.label}: no OIDCClientID; give the Client ID WSO2 shows for the application"
        )
    oidc.add("client_id", client_id, "OIDCClientID")
    secret = host.last("OIDCClientSecret")
    if secret and secret.arg().startswith("exec:"):
        oidc.note("OIDCClientSecret exec:...: put the secret in the variable below instead.")
    value, comment = _secret_value(
        secret,
        report,
        options,
        f"{env}_CLIENT_SECRET",
        f"the client secret WSO2 shows for client {client_id}",
    )
    oidc.add("client_secret", value, f"OIDCClientSecret{comment}")
    if secret is None:
        report.warnings.append(f"{host.label} has no OIDCClientSecret; the gateway needs one.")
    auth = host.value("OIDCProviderTokenEndpointAuth")
    if auth in ("client_secret_basic", "client_secret_post"):
        oidc.add("client_auth", auth, "OIDCProviderTokenEndpointAuth")
    elif auth:
        report.skip(
            f"OIDCProviderTokenEndpointAuth {auth}",
            "only client_secret_basic and client_secret_post",
        )
    scope_directive = host.last("OIDCScope")
    scopes = scope_directive.arg().split() if scope_directive else ["openid"]
    if "openid" not in scopes:
        scopes.insert(0, "openid")
        oidc.note("'openid' added to OIDCScope: OpenID Connect needs it.")
    if not scope_directive:
        oidc.note(
            "No OIDCScope: mod_auth_openidc asked for openid only, and so does this. With WSO2, "
            "add email and profile to get the e-mail address and the username claim."
        )
    oidc.add("scopes", scopes, "OIDCScope" if scope_directive else "mod_auth_openidc's default")
    params = host.value("OIDCAuthRequestParams")
    if params:
        extra = Flow()
        for name, value in parse_qsl(params, keep_blank_values=True):
            if name in _RESERVED_PARAMS or value == "#":
                report.skip(
                    f"OIDCAuthRequestParams {name}={value}",
                    "set by the gateway itself or taken from the request",
                )
            else:
                extra[name] = value
        if extra:
            oidc.add("extra_params", extra, "OIDCAuthRequestParams")
    redirect = host.value("OIDCRedirectURI")
    if not redirect:
        raise ImporterError(
            f"{host.label}: no OIDCRedirectURI (mod_auth_openidc requires it), "
            "e.g. OIDCRedirectURI http://localhost:8002/oauth2/callback"
        )
    oidc.note(_redirect_note(host, report, redirect, tls, address, route))
    _, _, _, path = split_url(redirect)
    oidc.add("redirect_path", path or "/oauth2/callback", "the path of OIDCRedirectURI")
    claim = host.last("OIDCRemoteUserClaim")
    user_claim = claim.arg() if claim else "sub@"
    if user_claim.endswith("@"):
        oidc.note(
            f"OIDCRemoteUserClaim {user_claim}"
            + (" (the default)" if not claim else "")
            + ": REMOTE_USER was the claim plus '@' and the issuer's host; the gateway names "
            "the user by the claim alone."
        )
        user_claim = user_claim.rstrip("@")
    if claim and len(claim.args) > 1:
        oidc.note(
            f"OIDCRemoteUserClaim's regular expression ({' '.join(claim.args[1:])}) is not "
            "applied: the user is named by the whole claim."
        )
    if user_claim == "sub":
        oidc.note(
            "WSO2 IS 7's sub is a UUID; to name users by their user name, use the username "
            "claim (profile scope)."
        )
    oidc.add("user_claim", user_claim, "OIDCRemoteUserClaim")
    userinfo = host.last("OIDCProviderUserInfoEndpoint")
    if userinfo is not None and userinfo.arg() == "":
        oidc.add("userinfo", False, 'OIDCProviderUserInfoEndpoint ""')
    else:
        oidc.add("userinfo", True, "mod_auth_openidc asks userinfo when the provider has it")
    logged_out = host.value("OIDCDefaultLoggedOutURL")
    if logged_out:
        oidc.add("post_logout_redirect", logged_out, "OIDCDefaultLoggedOutURL")
    pkce = host.value("OIDCPKCEMethod")
    if pkce:
        oidc.note(f"OIDCPKCEMethod {pkce}: the gateway always uses PKCE with S256.")
    response_type = host.value("OIDCResponseType")
    if response_type and response_type != "code":
        report.skip(f"OIDCResponseType {response_type}", "the gateway always uses the code flow")
    return oidc


def _redirect_note(
    host: _Host, report: Report, redirect: str, tls: bool, address: str, route: Block
) -> str:
    scheme, redirect_host, port, path = split_url(redirect)
    listen_port = _port_of(address)
    shown = "" if listen_port in (443 if tls else 80,) else f":{listen_port}"
    hosts = route.get("hosts") or []
    host_name = redirect_host or (hosts[0] if hosts else "<host>")
    callback = f"{'https' if tls else 'http'}://{host_name}{shown}{path}"
    note = (
        f"OIDCRedirectURI {redirect}: the gateway builds the callback URL from the request "
        "(<scheme>://<host>[:port] as the browser sent them) and this path, here "
        f"{callback}. It must be registered in WSO2 exactly so."
    )
    if path == "/callback":
        note += (
            " WSO2's mod_auth_openidc guide registers http://localhost:8002/oauth2/callback "
            "but configures /callback: the registered URL and this path must agree; change "
            "one of them (redirect_path: /oauth2/callback is the gateway's default)."
        )
        report.warnings.append(
            f"The callback path is /callback (OIDCRedirectURI), as in WSO2's guide, which "
            f"registers .../oauth2/callback instead: register {callback} in WSO2, or set "
            "redirect_path to the path that is registered."
        )
    if port and listen_port and port != listen_port:
        report.warnings.append(
            f"OIDCRedirectURI names port {port}, but {host.label} listens on {listen_port}: "
            f"browsers come back to {callback}."
        )
    if scheme and (scheme == "https") != tls:
        report.warnings.append(
            f"OIDCRedirectURI is {scheme}:// but {host.label} is "
            f"{'TLS' if tls else 'plain HTTP'}: browsers come back to {callback}."
        )
    if redirect_host and hosts and redirect_host not in hosts:
        report.warnings.append(
            f"OIDCRedirectURI names host {redirect_host}, which is not among the route's "
            f"hosts ({', '.join(hosts)})."
        )
    return note


def _session(host: _Host, report: Report, options: ImportOptions, env: str) -> Block:
    session = Block()
    session_type = (host.value("OIDCSessionType", "server-cache") or "server-cache").lower()
    cache = (host.value("OIDCCacheType", "shm") or "shm").lower()
    if session_type.startswith("server-cache") and cache == "redis":
        session.add("store", "redis", "OIDCCacheType redis")
        server = host.value("OIDCRedisCacheServer", "127.0.0.1:6379") or "127.0.0.1:6379"
        database = host.value("OIDCRedisCacheDatabase", "0")
        password = host.last("OIDCRedisCachePassword")
        auth: str = ""
        if password:
            value, _ = _secret_value(
                password,
                report,
                options,
                f"{env}_REDIS_PASSWORD",
                "the Redis password (URL-encoded)",
            )
            auth = config_text(":", value, "@")
        url = config_text(
            "redis://", auth, f"{server if ':' in server else server + ':6379'}/{database}"
        )
        session.add(
            "url", url, "OIDCRedisCacheServer, OIDCRedisCachePassword, OIDCRedisCacheDatabase"
        )
        for name in ("OIDCRedisCacheConnectTimeout", "OIDCRedisCacheTimeout"):
            directive = host.last(name)
            if directive and directive.arg().isdigit():
                key = "connect_timeout" if "Connect" in name else "command_timeout"
                session.add(key, duration_text(float(directive.arg())), name)
    else:
        session.add("store", "cookie")
        if session_type.startswith("server-cache"):
            session.note(
                f"OIDCSessionType server-cache with OIDCCacheType {cache}: Apache kept sessions "
                "in its own memory. Cookie sessions keep nothing on the server; for several "
                "gateways sharing sessions use store: redis."
            )
        host.all("OIDCRedisCacheServer")
    passphrase = host.last("OIDCCryptoPassphrase")
    session.note(
        "OIDCCryptoPassphrase is a passphrase, not a key: a session key is 32 random bytes "
        "in base64. Make one: openssl rand -base64 32"
        if passphrase
        else "No OIDCCryptoPassphrase: mod_auth_openidc made a random one at every start. "
        "Make a session key: openssl rand -base64 32"
    )
    session.add(
        "keys",
        [
            report.secret(
                f"{env}_SESSION_KEY", "a new session key: openssl rand -base64 32", key=True
            )
        ],
    )
    for name, key, default in (
        ("OIDCSessionInactivityTimeout", "inactivity_timeout", 300),
        ("OIDCSessionMaxDuration", "max_duration", 8 * 3600),
    ):
        text = host.value(name)
        seconds = float(text) if text and text.isdigit() else float(default)
        if text == "0" and key == "max_duration":
            session.note(
                f"{name} 0 (the ID token's lifetime): the gateway needs a duration; 8h here."
            )
            seconds = 8 * 3600.0
        where = name if text else f"{name} (mod_auth_openidc's default)"
        if seconds > 0:
            session.add(key, duration_text(seconds), where)
    cookie = host.value("OIDCCookie")
    if cookie:
        try:
            session.add("cookie_name", value_syntax.parse_route_name(cookie), "OIDCCookie")
        except ValueError as error:
            report.skip(f"OIDCCookie {cookie}", str(error))
    domain = host.value("OIDCCookieDomain")
    if domain:
        session.add("cookie_domain", domain.lstrip("."), "OIDCCookieDomain")
    path = host.value("OIDCCookiePath")
    if path:
        session.add("cookie_path", path, "OIDCCookiePath")
    same_site = host.last("OIDCCookieSameSite")
    if same_site:
        value = {"on": "Lax", "lax": "Lax", "strict": "Strict", "off": "None", "none": "None"}.get(
            same_site.arg().lower(), "Lax"
        )
        session.add("same_site", value, "OIDCCookieSameSite")
    leeway = host.last("OIDCRefreshAccessTokenBeforeExpiry")
    if leeway and leeway.arg().isdigit():
        session.add(
            "refresh_leeway",
            duration_text(float(leeway.arg())),
            "OIDCRefreshAccessTokenBeforeExpiry",
        )
    notes = {
        "OIDCCookieHTTPOnly": "session cookies are always HttpOnly",
        "OIDCSessionCookieChunkSize": "large sessions continue in <name>_1, <name>_2...",
        "OIDCStripCookies": "the gateway's own cookies never reach the application",
    }
    for name, note in notes.items():
        directive = host.last(name)
        if directive:
            session.note(f"{directive.show()}: {note}.")
    if session_type.startswith("client-cookie"):
        session.note(f"OIDCSessionType {session_type}: cookie sessions, as here.")
    return session


def _headers(host: _Host, report: Report, route: Block) -> Block:
    headers = Block()
    headers.add("preset", "mod_auth_openidc")
    pass_as = host.last("OIDCPassClaimsAs")
    mode = pass_as.arg().lower() if pass_as else "both"
    if mode in ("none", "environment"):
        headers.note(
            f"OIDCPassClaimsAs {mode}: mod_auth_openidc sent no claim headers to a proxied "
            "application; the gateway does (claim_prefix), and the access token with "
            "pass_access_token."
        )
    if pass_as and len(pass_as.args) > 1:
        headers.note(
            f"OIDCPassClaimsAs ... {pass_as.arg(1)}: the gateway sends values as printable "
            "ASCII, percent-encoding %, the list delimiter, controls and non-ASCII (UTF-8) "
            "characters (see docs/architecture.rst, Headers)."
        )
    headers.add("pass_access_token", True, "mod_auth_openidc passes OIDC_access_token by default")
    id_token = host.last("OIDCPassIDTokenAs")
    if id_token and "serialized" in [a.lower() for a in id_token.args]:
        headers.add("pass_id_token", True, "OIDCPassIDTokenAs serialized")
    if id_token and "payload" in [a.lower() for a in id_token.args]:
        report.skip("OIDCPassIDTokenAs payload", "the ID token's claims are passed one by one")
    prefix = host.value("OIDCClaimPrefix")
    if prefix is not None:
        headers.add("claim_prefix", prefix, "OIDCClaimPrefix")
    delimiter = host.value("OIDCClaimDelimiter")
    if delimiter is not None:
        headers.add("list_delimiter", delimiter, "OIDCClaimDelimiter")
    user_header = host.value("OIDCAuthNHeader")
    for directive in [d for d in host.directives if d.key == "requestheader"]:
        if (
            len(directive.args) >= 3
            and directive.arg(0).lower() == "set"
            and re.fullmatch(r"%\{REMOTE_USER\}[es]", directive.arg(2))
        ):
            user_header = directive.arg(1)
            host.used.add(id(directive))
    if user_header:
        headers.add(
            "remote_user_header",
            user_header,
            "OIDCAuthNHeader / RequestHeader set ... %{REMOTE_USER}",
        )
    else:
        headers.note(
            "REMOTE_USER is an Apache variable, not a header: a proxied application never saw "
            "it. The gateway sends the user in X-Remote-User (remote_user_header)."
        )
    return headers


@attrs.define
class _Location:
    section: Section
    path: str
    regex: bool
    auth_type: str | None = None
    requires: list[Directive] = attrs.field(factory=list)
    unauth_action: str | None = None


def _locations(host: _Host, report: Report, route: Block) -> None:
    """Which paths log in, which are public, and who may pass: from <Location> blocks."""
    locations: list[_Location] = []
    for section in host.locations:
        location = _Location(
            section, section.args[0] if section.args else "/", section.key == "locationmatch"
        )
        for child in section.children:
            if isinstance(child, Section):
                report.skip(f"{child.show()} in {section.show()}", _section_reason(child))
            elif child.key == "authtype":
                location.auth_type = child.arg().lower()
            elif child.key == "require":
                location.requires.append(child)
            elif child.key == "oidcunauthaction":
                location.unauth_action = child.arg().lower()
            elif child.key == "proxypass":
                pass  # handled with the other ProxyPass lines
            else:
                report.skip(
                    f"{child.show()} in {section.show()}", "per-location settings are not imported"
                )
        locations.append(location)
    protected = [loc for loc in locations if loc.auth_type == "openid-connect"]
    for location in protected:
        requires = "; ".join(r.show() for r in location.requires) or "no Require"
        route.note(
            f"{location.section.show()} AuthType openid-connect, {requires}: "
            + (
                "the whole route logs in (the oidc block)."
                if location.path.rstrip("/") == ""
                else "login on this path."
            )
        )
    public: list[str] = []
    authorize_root: Block | None = None
    paths = route.get("paths") or []
    oidc = route.get("oidc")
    for location in locations:
        grants_all = any(
            [a.lower() for a in r.args] == ["all", "granted"] for r in location.requires
        )
        if location.auth_type in ("none",) or (location.auth_type is None and grants_all):
            public.append(f"~ {location.path}" if location.regex else location.path)
            continue
        if location.unauth_action == "401" and not location.regex:
            api = list(oidc.get("api_paths") or [])
            api.append(location.path)
            oidc.add("api_paths", api, "OIDCUnAuthAction 401 in <Location>")
        elif location.unauth_action:
            report.skip(
                f"OIDCUnAuthAction {location.unauth_action} in {location.section.show()}",
                "browsers are sent to log in, API clients get 401 (see oidc.api_paths)",
            )
        if location.auth_type != "openid-connect":
            continue
        rules = _require_rules(location, report)
        if rules is None:
            continue
        if location.path.rstrip("/") == "" and not location.regex:
            authorize_root = rules
        elif location.regex:
            report.skip(
                f"Require ... in {location.section.show()}", "per-path rules need a path prefix"
            )
        else:
            match = next((p for p in paths if p.get("prefix") == location.path), None)
            if match is None:
                match = Block()
                match.add("prefix", location.path)
                match.add("upstream", route.get("upstream"))
                paths.append(match)
            match.add("authorize", rules, f"Require in {location.section.show()}")
    if paths:
        route.add("paths", paths)
    if authorize_root is not None:
        route.add("authorize", authorize_root, "Require in <Location />")
    if protected and not any(loc.path.rstrip("/") == "" and not loc.regex for loc in protected):
        prefixes = [loc.path for loc in protected if not loc.regex]
        if prefixes:
            public.insert(0, f"~ {not_starting_with(prefixes)}")
            route.note(
                "Only "
                + ", ".join(loc.path for loc in protected if not loc.regex)
                + " had AuthType openid-connect: every other path is public (a public_paths "
                "regex), and passes without identity headers."
            )
    if not protected:
        route.note(
            "No <Location> had AuthType openid-connect, so mod_auth_openidc protected "
            "nothing; the gateway asks for a login on the whole route. List what should "
            "stay open in public_paths."
        )
        report.warnings.append(
            f"{host.label}: no <Location> with AuthType openid-connect; the whole route now "
            "needs a login."
        )
    if public:
        route.add("public_paths", public, "<Location> with AuthType None or Require all granted")


def _require_rules(location: _Location, report: Report) -> Block | None:
    """authorize rules for a location's Require lines (any one of them admits, as in Apache)."""
    # (is a regular expression, text): a literal value may itself start with "~".
    claims: dict[str, list[tuple[bool, str]]] = {}
    valid_user = False
    for require in location.requires:
        kind = require.arg().lower()
        if kind == "valid-user":
            valid_user = True
        elif kind == "claim":
            for rule in require.args[1:]:
                name, colon, value = rule.partition(":")
                if not colon:
                    name, tilde, value = rule.partition("~")
                    if not tilde:
                        report.skip(
                            f"{require.show()} in {location.section.show()}", "not claim:value"
                        )
                        continue
                claims.setdefault(name, []).append((not colon, value))
        else:
            report.skip(
                f"{require.show()} in {location.section.show()}",
                "only Require valid-user and Require claim name:value are imported",
            )
    if valid_user or not claims:
        if claims:
            report.skip(
                f"Require claim ... in {location.section.show()}",
                "Require valid-user in the same place admits every user anyway",
            )
        return None
    if len(claims) > 1:
        report.skip(
            f"Require claim {' '.join(claims)} in {location.section.show()}",
            "Apache admitted a user matching any of several claims; the gateway's rules must "
            "all pass: write one authorize rule by hand",
        )
        return None
    name, values = next(iter(claims.items()))
    rules = Block()
    if len(values) == 1 and not values[0][0] and not values[0][1].startswith("~"):
        rules.add("claims", Flow({name: values[0][1]}))
    else:
        alternatives = [text if regex else re.escape(text) for regex, text in values]
        rules.add("claims", Flow({name: f"~ (?:{'|'.join(alternatives)})"}))
        rules.note("The gateway's regular expression must match the whole claim value.")
    return rules


def _next_steps(providers: dict[str, tuple[str, Block]]) -> list[str]:
    steps = [
        "Register the callback URL in WSO2 (the application's Protocol tab, Authorized "
        "redirect URLs) exactly as the comment on oidc.redirect_path says."
    ]
    if any(block.get("insecure_skip_verify") for _, block in providers.values()):
        steps.append(
            "Export WSO2's certificate, name it in the provider's ca_file and remove "
            "insecure_skip_verify."
        )
    return steps
