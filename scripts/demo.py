"""``make demo``: log in with OpenID Connect through the gateway, end to end.

Starts, on this machine only:

* the WSO2-shaped development provider (``tests/provider``, node + oidc-provider)
  on a free https port, with a certificate from a throwaway demo CA; the
  super tenant (carbon.super) has the client of app1, the acme.com tenant the
  client of app2 (``npm ci`` runs in tests/provider the first time);
* two request-echo back ends (``python -m idgateway.demo.echo``);
* the gateway (``twistd -n idgateway``) with a generated configuration:
  app1.localhost logs in on carbon.super and forwards oauth2-proxy headers,
  app2.localhost logs in on acme.com and forwards mod_auth_openidc headers,
  api.localhost takes bearer tokens (JWT or opaque, docs/apis.rst) and prints
  a ``curl`` line that gets a client-credentials token and calls it.

Session keys and client secrets are random for every run and reach the gateway
through environment variables (``${APP1_SESSION_KEY}`` in the config), as they
should in production. Ports: the gateway listens on $DEMO_PORT (default 8080)
or, if that is taken, a free port. Runs until Ctrl-C (or SIGTERM) and then
stops everything it started.
"""

from __future__ import annotations

import base64
import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from idgateway.config.signing_keys import generate_key_file  # noqa: E402
from tests.certs import make_ca  # noqa: E402
from tests.provider_process import (  # noqa: E402
    DEFAULT_USERS,
    PROVIDER_DIR,
    ProviderError,
    ProviderProcess,
    _installed,
    node_binary,
)

TWISTD = "from twisted.scripts.twistd import run; run()"
SUPER_TENANT = "carbon.super"
APP2_TENANT = "acme.com"
READY_TIMEOUT = 30.0


class Stop(Exception):
    """SIGTERM (or a second Ctrl-C): stop everything and exit."""


def port_or_free(preferred: int, taken: set[int]) -> int:
    """``preferred`` if nothing listens there (and it is not ``taken``), else a free port."""
    for candidate in (preferred, 0):
        if candidate and candidate in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port
    raise RuntimeError("no free port")


def wait_for(port: int, process: subprocess.Popen[bytes], what: str, log: Path | None) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with status {process.returncode}{_see(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not start listening on port {port}{_see(log)}")


def _see(log: Path | None) -> str:
    return f"; see {log}" if log is not None else ""


def get_status(port: int, host: str, path: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": f"{host}:{port}"})
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        connection.close()


def wait_for_login(port: int, gateway: subprocess.Popen[bytes], log: Path) -> bool:
    """Discovery runs in the background: wait until both apps offer a login redirect."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise SystemExit(f"the gateway exited with status {gateway.returncode}{_see(log)}")
        if all(get_status(port, f"{app}.localhost", "/") == 302 for app in ("app1", "app2")):
            return True
        time.sleep(0.2)
    return False


def random_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


API_CLIENT = "api-client"
API_SCOPES = ["orders:read", "orders:admin"]


def provider_config(
    gateway_port: int, app1_secret: str, app2_secret: str, api_secret: str = "unused"
) -> dict[str, Any]:
    def origin(app: str) -> str:
        return f"http://{app}.localhost:{gateway_port}"

    return {
        "tenants": {
            SUPER_TENANT: {
                "api_scopes": API_SCOPES,
                "clients": [
                    {
                        # A service calling api.localhost: WSO2 "Token type: JWT",
                        # the client-credentials grant, audience "orders".
                        "client_id": API_CLIENT,
                        "client_secret": api_secret,
                        "redirect_uris": [f"{origin('api')}/unused"],
                        "grant_types": ["authorization_code", "client_credentials"],
                        "token_endpoint_auth_method": "client_secret_basic",
                        "access_token_format": "jwt",
                        "access_token_audiences": ["orders"],
                    },
                    {
                        "client_id": "app1-client",
                        "client_secret": app1_secret,
                        "redirect_uris": [f"{origin('app1')}/oauth2/callback"],
                        "post_logout_redirect_uris": [f"{origin('app1')}/"],
                        "token_endpoint_auth_method": "client_secret_basic",
                    },
                ],
            },
            APP2_TENANT: {
                "clients": [
                    {
                        "client_id": "app2-client",
                        "client_secret": app2_secret,
                        "redirect_uris": [f"{origin('app2')}/oauth2/callback"],
                        "post_logout_redirect_uris": [f"{origin('app2')}/"],
                        "token_endpoint_auth_method": "client_secret_post",
                    }
                ]
            },
        }
    }


def gateway_config(
    gateway_port: int, echo1: int, echo2: int, op: ProviderProcess, assertion_key: Path
) -> str:
    return f"""# Generated by scripts/demo.py for one run.
#
# Secrets are not written here: ${{NAME}} is read from the environment when the
# gateway starts. The demo sets APP1_SESSION_KEY, APP1_CLIENT_SECRET,
# APP2_SESSION_KEY and APP2_CLIENT_SECRET to random values for each run; in
# production set them from your secret store (session keys: openssl rand -base64 32),
# or use client_secret_file: /path/to/secret.
listeners:
  - address: 127.0.0.1:{gateway_port}

# The gateway's key for app1's signed identity assertion (made by idgateway keygen);
# published at /.well-known/idgateway/jwks.json, where the echo back end checks it.
assertion_keys: [{assertion_key}]

providers:
  # WSO2 IS: the super tenant, found through its discovery document.
  wso2:
    discovery_url: {op.discovery_url(SUPER_TENANT)}
    ca_file: {op.ca_file}   # the demo CA: TLS to the provider is verified
  # A second tenant: its issuer is https://HOST/t/<tenant>/oauth2/token.
  acme:
    issuer: {op.issuer(APP2_TENANT)}
    ca_file: {op.ca_file}

routes:
  - name: app1
    hosts: [app1.localhost]
    upstream: http://127.0.0.1:{echo1}
    oidc:
      provider: wso2
      client_id: app1-client
      client_secret: ${{APP1_CLIENT_SECRET}}
      client_auth: client_secret_basic
      scopes: [openid, email, profile, groups]
      user_claim: username
    session:
      keys: [${{APP1_SESSION_KEY}}]
      inactivity_timeout: 1h
      max_duration: 24h
    headers: oauth2-proxy
    public_paths: [/healthz]
    assertion: {{header: X-Idgateway-Assertion, lifetime: 60s}}

  - name: app2
    hosts: [app2.localhost]
    upstream: http://127.0.0.1:{echo2}
    oidc:
      provider: acme
      client_id: app2-client
      client_secret: ${{APP2_CLIENT_SECRET}}
      client_auth: client_secret_post
      user_claim: username
    session:
      keys: [${{APP2_SESSION_KEY}}]
    headers: mod_auth_openidc

  # An API: no login page, access tokens only (docs/apis.rst). JWTs are
  # verified here; opaque tokens are introspected with app1's client.
  - name: api
    hosts: [api.localhost]
    upstream: http://127.0.0.1:{echo1}
    bearer:
      provider: wso2
      tokens: [jwt, opaque]
      audiences: [orders]
      introspection:
        client_id: app1-client
        client_secret: ${{APP1_CLIENT_SECRET}}
      dpop: optional
      realm: orders
    authorize:
      scopes: [orders:read]
"""


def banner(
    gateway_port: int,
    echo1: int,
    echo2: int,
    op: ProviderProcess,
    workdir: Path,
    logs: dict[str, Path],
    ready: bool,
    api_secret: str = "",
) -> str:
    app1 = f"http://app1.localhost:{gateway_port}/"
    app2 = f"http://app2.localhost:{gateway_port}/"
    api = f"http://api.localhost:{gateway_port}/"
    token_url = f"{op.base_url}/oauth2/token"
    super_users = DEFAULT_USERS[SUPER_TENANT]
    acme_users = DEFAULT_USERS[APP2_TENANT]
    warning = (
        "" if ready else "\nWARNING: the gateway has not reached the provider yet; see its log.\n"
    )
    return f"""
idgateway demo is running: log in through the gateway with OpenID Connect.
{warning}
  {app1}   -> echo back end on 127.0.0.1:{echo1}
      provider tenant {SUPER_TENANT}, headers: oauth2-proxy (X-Forwarded-User, ...)
      and a signed identity assertion (X-Idgateway-Assertion) that the echo page
      verifies with PyJWT against http://app1.localhost:{gateway_port}/.well-known/idgateway/jwks.json
      users: alice / {super_users["alice"]}   (group engineering)
             bob / {super_users["bob"]}       (group sales)
      public, no login: {app1}healthz
      sign out: {app1}oauth2/sign_out

  {app2}   -> echo back end on 127.0.0.1:{echo2}
      provider tenant {APP2_TENANT}, headers: mod_auth_openidc (X-Remote-User, OIDC_CLAIM_*)
      users: carol / {acme_users["carol"]}
      sign out: {app2}oauth2/sign_out

  {api}    -> echo back end on 127.0.0.1:{echo1}
      bearer tokens only (scope orders:read), no login page. Get a token with the
      client-credentials grant and call the API:

      TOKEN=$(curl -s --cacert {op.ca_file} -u {API_CLIENT}:{api_secret} \\
          -d grant_type=client_credentials -d scope=orders:read {token_url} \\
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
      curl -i -H "Authorization: Bearer $TOKEN" {api}

      Without a token: curl -i {api}  (401 with a WWW-Authenticate challenge)
      Metadata for OAuth clients: {api}.well-known/oauth-protected-resource

Provider (WSO2-shaped, for development): {op.base_url}
  The browser will warn that the provider's certificate is not trusted: it comes
  from a throwaway demo CA ({op.ca_file}).
  That is expected in the demo: accept it to reach the login page. The gateway
  itself trusts only that CA (ca_file) and verifies the provider's certificate.

Open the app URLs in a browser on this machine (Chromium and curl resolve
*.localhost to loopback), sign in, and the echo page shows the identity headers
the application received. Or: curl -i {app1}

Session keys and client secrets are random for this run and reach the gateway as
environment variables: the config says keys: [${{APP1_SESSION_KEY}}].

Generated config: {workdir / "gateway.yaml"}
Logs:             gateway  {logs["gateway"]}
                  provider {logs["provider"]}
                  echo     {logs["echo"]}

Press Ctrl-C to stop.
"""


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    if node_binary() is None:
        print("make demo needs node (20 or later) for the development provider", file=sys.stderr)
        return 1
    try:
        preferred = int(os.environ.get("DEMO_PORT", "8080"))
    except ValueError:
        print(f"DEMO_PORT={os.environ['DEMO_PORT']!r} is not a port number", file=sys.stderr)
        return 2

    def on_sigterm(*_: object) -> None:
        raise Stop()

    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored
    # (as a background job of a script); SIGTERM and a closed terminal stop too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)

    taken: set[int] = set()
    gateway_port = port_or_free(preferred, taken)
    echo1, echo2 = port_or_free(8081, taken), port_or_free(8082, taken)
    workdir = Path(tempfile.mkdtemp(prefix="idgateway-demo-"))
    logs = {
        "gateway": workdir / "gateway.log",
        "provider": workdir / "provider" / "provider.log",
        "echo": workdir / "echo.log",
    }

    app1_secret, app2_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    api_secret = secrets.token_urlsafe(24)
    env = dict(os.environ)
    env.update(
        APP1_SESSION_KEY=random_key(),
        APP2_SESSION_KEY=random_key(),
        APP1_CLIENT_SECRET=app1_secret,
        APP2_CLIENT_SECRET=app2_secret,
    )

    op = ProviderProcess(
        workdir / "provider",
        provider_config(gateway_port, app1_secret, app2_secret, api_secret),
        ca=make_ca(workdir / "ca", "idgateway demo CA"),
    )
    processes: list[subprocess.Popen[bytes]] = []
    echo_log = open(logs["echo"], "wb")
    try:
        if not _installed():
            print(f"Installing the provider's node modules (npm ci in {PROVIDER_DIR}) ...")
        print("Starting the development provider ...", flush=True)
        try:
            op.start()
        except ProviderError as error:
            print(f"the provider did not start: {error}", file=sys.stderr)
            return 1

        assertion_key = workdir / "assertion.pem"
        if not assertion_key.exists():
            generate_key_file(str(assertion_key), "ec")
        # app1's echo verifies the signed identity assertion, as an application would.
        check = [
            "--assertion-jwks",
            f"http://127.0.0.1:{gateway_port}/.well-known/idgateway/jwks.json",
            "--assertion-host",
            f"app1.localhost:{gateway_port}",
            "--assertion-audience",
            "app1",
        ]
        for port, extra in ((echo1, check), (echo2, [])):
            echo = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "idgateway.demo.echo",
                    "--listen",
                    f"127.0.0.1:{port}",
                    *extra,
                ],
                cwd=REPO,
                stdout=echo_log,
                stderr=subprocess.STDOUT,
            )
            processes.append(echo)
            wait_for(port, echo, "echo back end", logs["echo"])

        config = workdir / "gateway.yaml"
        config.write_text(gateway_config(gateway_port, echo1, echo2, op, assertion_key))
        print("Starting the gateway ...", flush=True)
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-c",
                TWISTD,
                "-n",
                "--pidfile=",
                "--logfile",
                str(logs["gateway"]),
                "idgateway",
                "--config",
                str(config),
            ],
            cwd=REPO,
            env=env,
        )
        processes.append(gateway)
        wait_for(gateway_port, gateway, "the gateway", logs["gateway"])
        ready = wait_for_login(gateway_port, gateway, logs["gateway"])
        print(banner(gateway_port, echo1, echo2, op, workdir, logs, ready, api_secret), flush=True)

        # Run until Ctrl-C / SIGTERM, or until one of the parts dies.
        watched = [("the gateway", gateway), ("an echo back end", processes[0])]
        watched += [("an echo back end", processes[1])]
        while True:
            for what, process in watched:
                if process.poll() is not None:
                    print(f"{what} exited with status {process.returncode}; stopping the demo")
                    return process.returncode or 1
            if op.process is not None and op.process.poll() is not None:
                code = op.process.returncode
                print(f"the provider exited with status {code}{_see(logs['provider'])}")
                return 1
            time.sleep(0.5)
    except (KeyboardInterrupt, Stop):
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\nStopping the demo ...", flush=True)
        for process in reversed(processes):
            stop_process(process)
        op.stop()
        echo_log.close()


if __name__ == "__main__":
    sys.exit(main())
