"""The running gateway: listeners, the current state, and reload on SIGHUP."""

from __future__ import annotations

import gc
import signal
from typing import TYPE_CHECKING, Any, TextIO

from twisted.application.service import MultiService
from twisted.internet import defer, threads
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from idgateway._twisted import log_fallbacks
from idgateway.config.load import ConfigError, load_config
from idgateway.config.model import Config, Listener
from idgateway.config.watch import ConfigWatcher
from idgateway.observe import access_log as observe
from idgateway.routing.resource import GatewayResource
from idgateway.routing.state import StateBuilder, StateHolder
from idgateway.server import systemd
from idgateway.server.channel import GatewayChannel, GatewaySite
from idgateway.server.connection_limits import (
    OncePerSecond,
    default_max_connections,
    process_share,
    throttle_accept_logs,
)
from idgateway.server.socket_writes import accept_listened
from idgateway.server.startup_errors import StartupError, listen_problem, stop_starting
from idgateway.server.tls import GatewayTLSFactory, SNIServerContexts

if TYPE_CHECKING:
    from idgateway.server.h2_connection import H2Offer

# Idle keep-alive connections from clients are closed after this long.
CLIENT_IDLE_TIMEOUT = 75
# Seconds in-flight requests get after SIGTERM before they are cut.
DRAIN_TIMEOUT = 30.0


# ---------------------------------------------------------------------------
# Draining: stop accepting, close idle connections, let requests finish


class DrainableChannel(GatewayChannel):
    """A channel its site can ask to finish its request and close."""

    site: DrainableSite
    # An idle keep-alive connection is mostly this object and its transport.
    # CPython shares one table of attribute names among a class's instances,
    # but stops adding names to it once a few dozen instances exist: a name
    # first set after a burst of accepts (``persistent``, at the first
    # request) gives each channel a dict of its own (about 0.8 KiB, most of
    # an idle connection's memory). The per-connection fields, twisted.web's
    # and the gateway's, live in slots instead; __init__ gives each the
    # default the classes above have.
    __slots__ = (
        "_HTTPChannel__first_line",
        "_HTTPChannel__header",
        "_buffer",
        "_busyReceiving",
        "_command",
        "_dataBuffer",
        "_handlingRequest",
        "_head_since",
        "_host",
        "_idle_period",
        "_idle_since",
        "_networkProducer",
        "_path",
        "_peer",
        "_reading_body",
        "_receivedHeaderCount",
        "_receivedHeaderSize",
        "_requestProducer",
        "_requestProducerStreaming",
        "_savedTimeOut",
        "_silent",
        "_transferDecoder",
        "_version",
        "_waitingForTransport",
        "callLater",
        "connected",
        "factory",
        "length",
        "line_mode",
        "paused",
        "persistent",
        "requestFactory",
        "requests",
        "site",
        "timeOut",
        "transport",
    )
    # A WebSocket tunnel now: no request boundary to wait for.
    upgraded = False
    # The upgraded request's route (idgateway_websockets_open counts these).
    websocket_route: str | None = None

    def __init__(self) -> None:
        # A slot has no default of its own: without these, reading one before
        # it was set would raise instead of finding GatewayChannel's default.
        for name, default in _CHANNEL_DEFAULTS:
            setattr(self, name, default)
        super().__init__()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.connections.add(self)
        if self.site.draining:
            self.drain()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.site.forget(self)

    def switch_to_tunnel(self, protocol: Any) -> None:
        # The request that upgraded is the first (and only) one in flight.
        if self.requests:
            self.websocket_route = getattr(self.requests[0], "idgw_route", None)
        super().switch_to_tunnel(protocol)
        self.upgraded = True
        # The tunnel now owns connectionLost; keep counting the connection
        # until it really ends.
        tunnel_lost = self.connectionLost

        def connection_lost(reason: Failure = connectionDone) -> None:
            try:
                tunnel_lost(reason)
            finally:
                self.site.forget(self)

        self.connectionLost = connection_lost  # type: ignore[method-assign]

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if self.site.draining:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return bool(super().checkPersistence(request, version))

    # (All it adds to the stock one: a one-pass head asks site.draining itself.)
    site_draining_persistence = checkPersistence

    def drain(self) -> None:
        """Close now if idle, else after the response in progress.

        A WebSocket tunnel closes now: it has no end to wait for, and its
        client can reconnect at once.
        """
        if self.upgraded:
            if self.transport is not None:
                self.transport.loseConnection()
            return
        if not self.requests:
            self.loseConnection()
            return
        self.persistent = False
        for request in self.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"Connection", [b"close"])


_UNSET = object()
# (slot, the default a class above DrainableChannel gives it) for each slot
# that has one.
_CHANNEL_DEFAULTS = tuple(
    (name, default)
    for name in DrainableChannel.__slots__
    if (default := getattr(GatewayChannel, name, _UNSET)) is not _UNSET
)


class DrainableSite(GatewaySite):
    """A GatewaySite that knows its open connections and can wind them down."""

    protocol = DrainableChannel  # type: ignore[assignment]

    def __init__(
        self,
        *args: Any,
        max_connections: int | None = None,
        address: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[DrainableChannel] = set()
        self.draining = False
        self._waiters: list[defer.Deferred[None]] = []
        # This process's share of the listener's max_connections (None: no limit).
        self.max_connections = max_connections
        self.refused = OncePerSecond(
            self.reactor,
            "max_connections ({limit}) reached on {address}: closed {count} new "
            "connection(s) since the last report ({total} in all)",
            address=address,
            limit=max_connections,
        )

    def buildProtocol(self, addr: Any) -> Any:
        limit = self.max_connections
        if limit is not None and len(self.connections) >= limit:
            # None: twisted's port closes the accepted socket at once. No
            # response and no traceback; the count goes into the next report.
            self.refused.note()
            return None
        return super().buildProtocol(addr)

    def set_limits(self, header_timeout: float, body_timeout: float, max_connections: int) -> None:
        """A listener's limits (at start and on reload; open connections keep theirs)."""
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.refused.fields["limit"] = max_connections

    def forget(self, channel: DrainableChannel) -> None:
        self.connections.discard(channel)
        if not self.connections and self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def drain(self) -> defer.Deferred[None]:
        """Fires once every connection has closed (new ones close as they come)."""
        self.draining = True
        for channel in list(self.connections):
            channel.drain()
        waiter: defer.Deferred[None] = defer.Deferred()
        if self.connections:
            self._waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter

    def open_websockets(self) -> dict[str, int]:
        """WebSocket tunnels open on this site, by route (None: no route)."""
        counts: dict[str, int] = {}
        for channel in self.connections:
            if channel.upgraded:
                route = channel.websocket_route or "-"
                counts[route] = counts.get(route, 0) + 1
        return counts

    def abort_all(self) -> None:
        for channel in list(self.connections):
            transport = channel.transport
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# The service


def _read_config(path: str) -> Config | Exception:
    """load_config for a thread: the configuration, or what stopped it."""
    try:
        return load_config(path)
    except Exception as error:
        return error


class ListenerFailed(Exception):
    """A listener of a new configuration could not be opened."""


class GatewayService(MultiService):
    """Binds the listeners and serves the current configuration."""

    _log = Logger()
    # A Site that can drain its connections (SIGTERM).
    site_class: type[GatewaySite] = DrainableSite
    # Seconds in-flight requests get after SIGTERM.
    drain_timeout = DRAIN_TIMEOUT

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        install_signal_handlers: bool = True,
        access_out: TextIO | None = None,
    ) -> None:
        super().__init__()
        # twistd's stdout when it logs text there: access lines go to it directly.
        self.access_out = access_out
        self.reactor = reactor
        self.config = config
        self.builder = StateBuilder(reactor)
        self.holder = StateHolder(self.builder.build(config))
        self.install_signal_handlers = install_signal_handlers
        self._ports: dict[tuple[str, int], IListeningPort] = {}
        self._tls: dict[tuple[str, int], SNIServerContexts] = {}
        self.reloads = 0
        # Every Site made for a listener, so that SIGTERM can drain them.
        self._drain_sites: list[DrainableSite] = []
        # Each listener's Site, by (host, port): reloads update their limits.
        self._sites: dict[tuple[str, int], GatewaySite] = {}
        # max_websockets is per route for all workers together.
        self.holder.websockets.workers = config.workers
        self._draining: defer.Deferred[None] | None = None
        # reload: {watch: true}: a change to the file reloads as SIGHUP does.
        self.watcher = ConfigWatcher(config.source, reactor, self.reload_in_background)
        # Reloads asked for so far (only the latest one read is applied).
        self._reload_asked = 0

    # -- lifecycle --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.access_out is not None:
            observe.write_access_text_to(self.access_out)
        for warning in self.config.warnings:
            self._log.warn("config: {warning}", warning=warning)
        # Private Twisted names this Twisted lacks: the stock path is taken.
        log_fallbacks()
        try:
            for listener in self.config.listeners:
                self._listen(listener)
            self._listen_admin()
        except StartupError as error:
            stop_starting(self._log, error)
        if self.install_signal_handlers:
            signal.signal(signal.SIGHUP, self._on_sighup)
            # idgateway.workers.master' worker process handles SIGTERM itself (with the
            # master's drain timeout).
            if self.drains_on_sigterm:
                # The reactor installs its own SIGTERM handler as it starts
                # (stop at once, then exit by the signal); ours must come after
                # it. Ours drains, then stops without recording the signal, so
                # twistd exits 0.
                self.reactor.callWhenRunning(signal.signal, signal.SIGTERM, self._on_sigterm)
        self._log.info(
            "idgateway serving {routes} route(s) on {listeners}",
            routes=len(self.config.routes),
            listeners=", ".join(
                ("https://" if each.tls else "http://") + each.address
                for each in self.config.listeners
            ),
        )
        # systemd hook: READY=1 once the reactor runs (its SIGTERM handler is in place).
        self.reactor.callWhenRunning(systemd.ready, f"serving {len(self.config.routes)} route(s)")
        if self.install_signal_handlers:
            # A process of its own (not a test): what start-up made (modules,
            # config, route tables) lives as long as the process, so leave it
            # out of the cyclic garbage collector's full passes, which
            # otherwise walk all of it now and then under load.
            self.reactor.callWhenRunning(gc.freeze)
        if self.watches_config:
            self.watcher.apply(self.config.reload)

    def stopService(self) -> defer.Deferred[None]:
        systemd.stopping()  # systemd hook: STOPPING=1
        super().stopService()
        if self.access_out is not None:
            observe.write_access_text_to(None)
        self.watcher.stop()
        ports, self._ports = list(self._ports.values()), {}
        stops = [defer.maybeDeferred(port.stopListening) for port in ports]
        for pool in self.holder.current.pools.values():
            pool.close()
        return defer.gatherResults(stops).addCallback(lambda _: None)

    # Which process serves the admin listener: the single process, or worker 0.
    serves_admin = True
    # Whether SIGTERM drains this process (workers get it from their master).
    drains_on_sigterm = True
    # Whether this process watches the config file (reload: watch); with
    # workers the master does, and tells them all as SIGHUP would.
    watches_config = True

    def _listen_admin(self) -> None:
        if self.config.admin is None or not self.serves_admin:
            return
        from idgateway.server.admin import admin_site

        host, port = self.config.admin
        endpoint_class = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
        failures: list[Any] = []
        d = endpoint_class(self.reactor, port, interface=host).listen(
            admin_site(self.holder, self, reactor=self.reactor)
        )
        d.addCallbacks(lambda p: self._ports.__setitem__(("admin", port), p), failures.append)
        if failures:
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise StartupError(listen_problem(address, "the admin listener", failures[0].value))
        self._log.info(
            "admin listener on http://{host}:{port}/ (healthz, readyz)", host=host, port=port
        )

    def listener_limits(self, listener: Listener, config: Config) -> tuple[float, float, int]:
        """(client_header_timeout, client_body_timeout, this process's max_connections)."""
        header = listener.client_header_timeout or config.client_header_timeout
        body = listener.client_body_timeout or config.client_body_timeout
        if listener.max_connections is not None:
            # The listener's limit is for all worker processes together.
            limit = process_share(listener.max_connections, config.workers)
        else:
            # Each process's own share of its own descriptors.
            limit = default_max_connections(len(config.listeners))
        return header, body, limit

    @staticmethod
    def send_timeout(listener: Listener, config: Config) -> float:
        """client_send_timeout: the listener's, else the top-level one."""
        return listener.client_send_timeout or config.client_send_timeout

    def http2_offer(self, listener: Listener, config: Config) -> H2Offer | None:
        """How the listener takes HTTP/2 connections (None: HTTP/1.1 only)."""
        mode = listener.http2_mode
        if mode == "off":
            return None
        # (Imported when a listener offers HTTP/2: h2, hpack and hyperframe
        # are about 2 MiB a process that serves none does without.)
        from idgateway.server.h2_connection import H2Offer

        return H2Offer(mode, config.http2, self.reactor)

    def _factory_for(self, listener: Listener) -> IProtocolFactory:
        """The listener's Site, behind TLS on a TLS listener."""
        header_timeout, body_timeout, max_connections = self.listener_limits(listener, self.config)
        resource = GatewayResource(self.holder, tls=listener.tls is not None, port=listener.port)
        limits: dict[str, Any] = {}
        if issubclass(self.site_class, DrainableSite):
            limits = {"max_connections": max_connections, "address": listener.address}
        site: GatewaySite = self.site_class(
            resource,
            timeout=CLIENT_IDLE_TIMEOUT,
            reactor=self.reactor,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            **limits,
        )
        if isinstance(site, DrainableSite):
            self._drain_sites.append(site)
        site.send_timeout = self.send_timeout(listener, self.config)
        site.http2 = self.http2_offer(listener, self.config)
        self._sites[(listener.host, listener.port)] = site
        if listener.tls is None:
            return site
        contexts = SNIServerContexts(listener.tls, http2=listener.http2_mode == "alpn")
        self._tls[(listener.host, listener.port)] = contexts
        return GatewayTLSFactory(contexts, False, site)

    def _listen(self, listener: Listener) -> None:
        factory = self._factory_for(listener)
        key = (listener.host, listener.port)
        endpoint_class = TCP6ServerEndpoint if ":" in listener.host else TCP4ServerEndpoint
        endpoint = endpoint_class(
            self.reactor, listener.port, backlog=1024, interface=listener.host
        )
        # systemd hook (socket activation): serve on the socket systemd passed for this
        # address, if it passed one, instead of binding.
        adopted = systemd.adopt_listener(self.reactor, listener.host, listener.port, factory)
        if adopted is not None:
            accept_listened(adopted)
            throttle_accept_logs(adopted, self.reactor, listener.address)
            self._ports[key] = adopted
            return
        # Listening on the reactor's own thread finishes synchronously for TCP;
        # an error (port in use) propagates and stops the start.
        d = endpoint.listen(factory)
        failures: list[Any] = []
        d.addCallbacks(lambda port: self._ports.__setitem__(key, port), failures.append)
        if failures:
            problem = listen_problem(listener.address, listener.source, failures[0].value)
            raise StartupError(problem)
        accept_listened(self._ports[key])
        throttle_accept_logs(self._ports[key], self.reactor, listener.address)

    def open_websockets(self) -> dict[str, int]:
        """WebSocket tunnels open on this process's listeners, by route.

        Read at scrape time from the sites' open connections, so a tunnel
        counts from its 101 until its connection is gone, exactly once.
        """
        counts: dict[str, int] = {}
        for site in self._drain_sites:
            for route, count in site.open_websockets().items():
                counts[route] = counts.get(route, 0) + count
        return counts

    # -- SIGTERM: drain, then stop ------------------------------------------------

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._terminate)

    def _terminate(self) -> None:
        if self._draining is not None:
            self._log.info("received SIGTERM again: already draining")
            return
        self._log.info("received SIGTERM: draining")

        def stop(result: object) -> None:
            if isinstance(result, Failure):
                self._log.failure("error while draining", result)
            if self.reactor.running:
                # stopService (a shutdown trigger) closes the pools.
                self.reactor.stop()

        self.drain_connections(self.drain_timeout).addBoth(stop)

    def drain_connections(self, timeout: float) -> defer.Deferred[None]:
        """Stop accepting, close idle connections, let in-flight requests finish.

        Fires once every connection has closed, or ``timeout`` seconds on, when
        the ones still open are cut. The service itself keeps running.
        """
        if self._draining is not None:
            return self._draining
        self.watcher.stop()
        ports, self._ports = list(self._ports.values()), {}
        stops: list[defer.Deferred[Any]] = [
            defer.maybeDeferred(port.stopListening) for port in ports
        ]
        sites = self._drain_sites
        self._log.info(
            "draining: no longer accepting; {count} connection(s) open",
            count=sum(len(site.connections) for site in sites),
        )
        waiting = defer.gatherResults(stops + [site.drain() for site in sites], consumeErrors=True)
        timer = self.reactor.callLater(timeout, self._drain_timed_out, timeout)

        def drained(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        self._draining = waiting.addBoth(drained).addCallback(lambda _: None)
        return self._draining

    def _drain_timed_out(self, timeout: float) -> None:
        sites = self._drain_sites
        self._log.warn(
            "drain timeout ({timeout:.0f} s): closing {count} connection(s) still open",
            timeout=timeout,
            count=sum(len(site.connections) for site in sites),
        )
        for site in sites:
            site.abort_all()

    # -- reload ------------------------------------------------------------------

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload_in_background)

    def reload_in_background(self) -> defer.Deferred[bool]:
        """SIGHUP and ``reload: watch``: read and check the file in a thread, then
        apply it on the reactor (``reload``).

        Reading secret files and certificates and checking the file never hold
        up the requests in flight, even on a slow disk or network file system.
        Of several reloads asked for at once, only the latest is applied.
        """
        self._reload_asked += 1
        asked = self._reload_asked
        pool = getattr(self.reactor, "getThreadPool", None)
        if pool is None:  # a test reactor without threads
            return defer.succeed(self.reload())
        self._log.info("reading {path} for a reload", path=self.config.source)
        read = threads.deferToThreadPool(self.reactor, pool(), _read_config, self.config.source)

        def apply(outcome: Config | Exception) -> bool:
            if asked != self._reload_asked:
                return False  # a later reload read the file again
            return self.reload(outcome)

        applied: defer.Deferred[bool] = read.addCallback(apply)
        return applied

    @systemd.notify_reload  # systemd hook: RELOADING=1 before, READY=1 after
    def reload(self, read: Config | Exception | None = None) -> bool:
        """Re-read the config file (or take what ``reload_in_background`` read);
        swap it in whole, or keep the old one and say why."""
        path = self.config.source
        if self._draining is not None:
            # A reload would listen again on the ports the drain closed.
            self._log.info("not reloading {path}: draining for shutdown", path=path)
            return False
        self._log.info("reloading configuration from {path}", path=path)
        try:
            if isinstance(read, Exception):
                raise read
            config = read if read is not None else load_config(path)
        except ConfigError as error:
            for problem in error.problems:
                self._log.error("reload refused: {problem}", problem=str(problem))
            return False
        except Exception:
            self._log.failure("reload refused: unexpected error reading {path}", path=path)
            return False
        try:
            # Load every certificate first, so a bad one refuses the whole reload.
            prepared = [
                (
                    self._tls[(each.host, each.port)],
                    SNIServerContexts.prepare(each.tls, http2=each.http2_mode == "alpn"),
                )
                for each in config.listeners
                if each.tls is not None and (each.host, each.port) in self._tls
            ]
            old = self.holder.current
            new = self.builder.build(config, old)
        except Exception:
            self._log.failure("reload refused: could not apply {path}", path=path)
            return False
        try:
            # New listeners first: a port that cannot be bound refuses the
            # whole reload, and the old listeners keep serving.
            self._open_new_listeners(config)
        except ListenerFailed as failure:
            StateBuilder.retire(new, old)
            self._log.error(
                "reload refused: {why}; still serving the previous configuration",
                why=str(failure),
            )
            return False
        for contexts, table in prepared:
            contexts.install(table)
        self.holder.current = new
        StateBuilder.retire(old, new)
        # The state start-up froze (startService) is garbage from now on:
        # give it back to the collector, or its reference cycles would stay.
        gc.unfreeze()
        self._close_old_listeners(config)
        self._update_limits(config)
        self.config = config
        self.reloads += 1
        if self.watches_config:
            self.watcher.apply(config.reload)
        for warning in config.warnings:
            self._log.warn("config: {warning}", warning=warning)
        self._log.info("configuration reloaded: {routes} route(s)", routes=len(config.routes))
        return True

    def _update_limits(self, config: Config) -> None:
        for listener in config.listeners:
            site = self._sites.get((listener.host, listener.port))
            if isinstance(site, DrainableSite):
                site.set_limits(*self.listener_limits(listener, config))
            if isinstance(site, GatewaySite):
                site.send_timeout = self.send_timeout(listener, config)
                # New connections only: open ones keep the limits they started with.
                site.http2 = self.http2_offer(listener, config)

    def _open_new_listeners(self, config: Config) -> None:
        """Listen on the configuration's new addresses, all or none (ListenerFailed)."""
        opened: list[tuple[str, int]] = []
        for listener in config.listeners:
            key = (listener.host, listener.port)
            if key in self._ports:
                continue
            try:
                self._listen(listener)
            except Exception as error:
                for done in opened:
                    self._ports.pop(done).stopListening()
                for done in (*opened, key):
                    self._tls.pop(done, None)
                    site = self._sites.pop(done, None)
                    if site in self._drain_sites:
                        self._drain_sites.remove(site)  # type: ignore[arg-type]
                if not isinstance(error, StartupError):
                    error = StartupError(listen_problem(listener.address, listener.source, error))
                raise ListenerFailed(str(error)) from None
            opened.append(key)

    def _close_old_listeners(self, config: Config) -> None:
        wanted = {(each.host, each.port) for each in config.listeners}
        for key in list(self._ports):
            if key[0] == "admin":
                continue  # the admin listener follows its own config (restart to move it)
            if key not in wanted:
                self._ports.pop(key).stopListening()
                self._tls.pop(key, None)
