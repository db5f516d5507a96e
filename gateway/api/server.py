"""The HTTP server: uvicorn with its h11 protocol, guarded against slow and greedy clients.

uvicorn (0.54) closes idle keep-alive connections but has no timeout for a request head
that never completes, nor for a body that trickles in, nor a cap on open connections.
:class:`GuardedH11Protocol` adds them:

- **head timeout**: from the connection's first moment (or, on a kept-alive connection,
  from the first byte of the next request) the whole request head must arrive within
  ``header_timeout_s``; otherwise 408 and the connection is closed;
- **body timeout**: a body must keep up with ``body_timeout_s`` plus one second per
  ``body_min_rate`` bytes received (the rule of Apache's mod_reqtimeout): a body sent at a
  few bytes a second is cut after about ``body_timeout_s``, a large upload on a slow but
  honest link is not. Time the server itself stops reading (flow control) is not counted;
- **connections**: past ``max_connections`` open connections a new one gets 503 and is
  closed at once; a connection serves at most ``keepalive_max_requests`` requests and
  idles at most ``keepalive_timeout_s`` between them;
- **a share per client**: one client address (an IPv6 one by its /64) holds at most
  ``max_connections_per_client`` of them, so that one client reopening idle connections
  as they are cut cannot keep the cap full for everyone else. A trusted proxy
  (``FACEREC_TRUSTED_PROXIES``: the load balancer, which limits its own clients) has no
  share of its own.

A connection upgraded to WebSocket leaves this protocol, and its timers with it (it still
counts against ``max_connections``); the WebSocket protocol is ``websockets``' sans-I/O one,
which reads a connection's next message only once the application took the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.flow_control import CLOSE_HEADER
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from gateway.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    body_min_rate: int = 16 * 1024
    keepalive_max_requests: int = 1000
    max_connections: int = 512
    max_connections_per_client: int = 64
    trusted: tuple[IPv4Network | IPv6Network, ...] = ()  # proxies: no share of their own

    @staticmethod
    def from_settings(settings: Settings) -> ConnectionLimits:
        return ConnectionLimits(
            settings.header_timeout_s,
            settings.body_timeout_s,
            settings.body_min_rate,
            settings.keepalive_max_requests,
            settings.max_connections,
            settings.max_connections_per_client,
            tuple(_networks(settings.trusted_proxies)),
        )


def _networks(listed: str) -> Iterator[IPv4Network | IPv6Network]:
    """The addresses and networks of a comma-separated list (``*``: every address)."""
    for item in (p.strip() for p in listed.split(",")):
        if item == "*":
            yield from (ip_network("0.0.0.0/0"), ip_network("::/0"))
        elif item:
            with contextlib.suppress(ValueError):  # a name, not an address: never matches
                yield ip_network(item, strict=False)


def client_group(host: str | None) -> str | None:
    """What one client's connections count under: its address; an IPv6 address by its
    /64 (one host is given a whole /64 to pick from). None for a socket without one."""
    if not host:
        return None
    try:
        address = ip_address(host)
    except ValueError:
        return host
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 client a.b.c.d
            return str(address.ipv4_mapped)
        return str(ip_network(f"{address}/64", strict=False))
    return str(address)


def _raw_response(status: int, reason: str, code: str, message: str, retry: int | None) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry is not None:
        head.append(f"retry-after: {retry}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


TIMEOUT_408 = _raw_response(
    408, "Request Timeout", "request_timeout", "the request did not arrive in time", None
)
FULL_503 = _raw_response(
    503, "Service Unavailable", "too_many_connections", "too many open connections", 1
)
CLIENT_FULL_503 = _raw_response(
    503,
    "Service Unavailable",
    "too_many_client_connections",
    "too many open connections from this address",
    1,
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits of :class:`ConnectionLimits` (set
    ``limits`` on a subclass: :func:`protocol_class`)."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_started = 0.0
        self._body_bytes = 0
        self._requests = 0

    # -- connections ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            log.warning("refused a connection: %d open", len(self.connections) - 1)
            transport.write(FULL_503)
            transport.close()
            return
        if self._over_client_share():
            log.warning("refused a connection: its client holds its share")
            transport.write(CLIENT_FULL_503)
            transport.close()
            return
        self._arm_head()

    def _over_client_share(self) -> bool:
        """Whether this connection's client already held its share before it. Counted
        over the server's open connections (WebSockets upgraded from this protocol
        included: they keep their ``client``), so no count can drift."""
        host = self.client[0] if self.client else None
        group = client_group(host)
        if group is None or self._trusted(host):
            return False
        held = sum(1 for c in self.connections if c is not self and client_group(_host(c)) == group)
        return held >= self.limits.max_connections_per_client

    def _trusted(self, host: str | None) -> bool:
        try:
            address = ip_address(host or "")
        except ValueError:
            return False
        return any(address in network for network in self.limits.trusted)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    # -- events ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        before = self.cycle
        if self._receiving_body():
            self._body_bytes += len(data)
        super().data_received(data)
        self._after(before, had_data=True)

    def on_response_complete(self) -> None:
        before = self.cycle
        super().on_response_complete()
        self._after(before, had_data=bool(self.conn.trailing_data[0]))

    def _after(self, before: RequestResponseCycle | None, had_data: bool) -> None:
        """After h11 has parsed what arrived: start or stop the timers."""
        if self.transport.get_protocol() is not self or self.transport.is_closing():
            self._cancel_timers()  # upgraded (WebSocket) or closing
            return
        if self.cycle is not before and self.cycle is not None:  # a new request head
            self._cancel(self._head_timer)
            self._head_timer = None
            self._requests += 1
            if self._requests >= self.limits.keepalive_max_requests:
                self.cycle.keep_alive = False  # the last one: its response says so
                self.headers.append(CLOSE_HEADER)  # the scope's header list
            if self._receiving_body():
                self._body_started = self.loop.time()
                self._body_bytes = 0
                self._arm_body(self.limits.body_timeout_s)
        elif self._body_timer is not None and not self._receiving_body():
            self._cancel(self._body_timer)
            self._body_timer = None
        if had_data and self._idle() and self._head_timer is None:
            self._arm_head()  # the first bytes of the next request head

    def _idle(self) -> bool:
        """No request is being served: what arrives is the head of the next one."""
        return self.cycle is None or self.cycle.response_complete

    def _receiving_body(self) -> bool:
        return (
            self.cycle is not None
            and not self.cycle.response_complete
            and self.conn.their_state is h11.SEND_BODY
        )

    # -- timers ---------------------------------------------------------------------------
    def _arm_head(self) -> None:
        self._cancel(self._head_timer)
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_late)

    def _arm_body(self, delay: float) -> None:
        self._cancel(self._body_timer)
        self._body_timer = self.loop.call_later(delay, self._body_check)

    def _head_late(self) -> None:
        self._head_timer = None
        if self._idle() and not self.transport.is_closing():
            self._close_with(TIMEOUT_408)

    def _body_check(self) -> None:
        self._body_timer = None
        if not self._receiving_body() or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the server is not reading: not the client's fault
            self._body_started += self.limits.body_timeout_s
            self._arm_body(self.limits.body_timeout_s)
            return
        deadline = (
            self._body_started
            + self.limits.body_timeout_s
            + self._body_bytes / self.limits.body_min_rate
        )
        left = deadline - self.loop.time()
        if left > 0:
            self._arm_body(left)
            return
        cycle = self.cycle
        assert cycle is not None
        started = cycle.response_started
        cycle.disconnected = True  # the application's receive() now ends, its send() is dropped
        cycle.message_event.set()
        self._close_with(b"" if started else TIMEOUT_408)

    def _close_with(self, response: bytes) -> None:
        log.info("closing a connection from %s: the request was too slow", self.client)
        if response:
            self.transport.write(response)
        self._cancel_timers()
        self.transport.close()

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()

    def _cancel_timers(self) -> None:
        self._cancel(self._head_timer)
        self._cancel(self._body_timer)
        self._head_timer = self._body_timer = None


def _host(protocol: Any) -> str | None:
    client = getattr(protocol, "client", None)
    return str(client[0]) if client else None


def protocol_class(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` bound to ``limits`` (uvicorn builds one per
    connection from the class)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


class _RefusedHandshakeFilter(logging.Filter):
    """uvicorn (0.54, websockets-sansio) logs "ASGI callable returned without completing
    handshake" after the application refused a handshake with an HTTP response (ASGI's
    ``websocket.http.response``), which the edge does for a bad key: not an error here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


def server_config(app: Any, settings: Settings, host: str, port: int, **options: Any) -> Any:
    """The uvicorn configuration of ``facerec serve``: the guarded protocol, keep-alive
    limits, and ``X-Forwarded-For`` believed only from ``FACEREC_TRUSTED_PROXIES``."""
    trusted = [p.strip() for p in settings.trusted_proxies.split(",") if p.strip()]
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _RefusedHandshakeFilter) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_RefusedHandshakeFilter())
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(ConnectionLimits.from_settings(settings)),
        timeout_keep_alive=settings.keepalive_timeout_s,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        backlog=min(2048, 4 * settings.max_connections),
        # WebSockets (video): a message over the frame limit is refused from its header
        # (1009); no per-message deflate (JPEG and PNG do not compress).
        ws="websockets-sansio",
        ws_max_size=settings.stream_max_frame_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=settings.stream_ping_s,  # a client that answers no ping in time
        ws_ping_timeout=settings.stream_ping_s,  # (one that stopped reading) is let go
        timeout_graceful_shutdown=30,  # requests in flight at shutdown: this long at most
        **options,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a graceful drain for load-balanced replicas.

    On SIGTERM the gateway is marked draining (``/readyz`` answers 503, so the load
    balancer's health check takes the replica out of rotation) while requests keep being
    served for ``drain_s`` seconds; then the server stops accepting connections, finishes
    the requests in flight, closes WebSockets with 1012 (service restart: the client
    reconnects, through the load balancer, to another replica), and :meth:`run` returns so
    that the caller can give the process's leases back. A second SIGTERM, or SIGINT, stops
    without the wait. Unlike uvicorn's own handling, SIGTERM is not raised again after the
    shutdown: the process exits normally, after its clean-up.
    """

    def __init__(self, config: uvicorn.Config, gateway: Any, drain_s: float) -> None:
        super().__init__(config)
        self.gateway, self.drain_s = gateway, drain_s
        self._drain_until: float | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if sig == signal.SIGTERM and self._drain_until is None and self.drain_s > 0:
            log.warning("SIGTERM: draining for %.1f s, then stopping", self.drain_s)
            self.gateway.draining = True
            self._drain_until = time.monotonic() + self.drain_s
            return
        self.gateway.draining = True
        if sig == signal.SIGTERM:
            self.should_exit = True  # not re-raised once the server has stopped
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self.should_exit = True
        return await super().on_tick(counter)
