"""Where a webhook may go, and the POST that goes there.

A project names the URL, and a worker inside the farm's network sends to it: unchecked, that
URL reaches the farm's own hosts (a cloud's metadata service, an admin port), and the recorded
outcome of each attempt (refused, timed out, HTTP 404) maps them out. So the receiver's name is
resolved within the attempt's deadline, every address is vetted, and the connection goes to a
vetted address (a name that resolves again to another address between the check and the
connect changes nothing).

Never allowed: link-local addresses (169.254.169.254 and the other metadata services live
there), the known metadata addresses elsewhere, unspecified, multicast and reserved ones.
Loopback and private networks only with GENFARM_WEBHOOK_ALLOW_PRIVATE, the embedded default (a
receiver on the studio's own machine or network); docker-compose.yml turns it off.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# metadata services outside link-local space: AWS over IPv6, Alibaba Cloud, Azure's WireServer,
# Oracle Cloud Classic
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "fd00:ec2::254", "100.100.100.200", "168.63.129.16", "192.0.0.192"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # an IPv4 address reached through DNS64/NAT64


class ReceiverRefused(Exception):
    """The receiver's address is one that webhooks may not reach."""


def refusal(ip: IPAddress, allow_private: bool) -> str | None:
    """Why webhooks may not go to ``ip`` (a few words), or None when they may."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
        elif ip.sixtofour is not None:  # 2002:a9fe:a9fe:: leads to 169.254.169.254
            return refusal(ip.sixtofour, allow_private)
        elif ip in NAT64:  # 64:ff9b::a9fe:a9fe too
            return refusal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), allow_private)
    if ip.is_link_local or ip in METADATA:
        return "a link-local or metadata address"
    if ip.is_unspecified or ip.is_multicast or (ip.is_reserved and not ip.is_loopback):
        return "an unspecified, multicast or reserved address"  # (::1 lies in reserved ::/8)
    if not allow_private and not ip.is_global:
        return "a loopback or private address (GENFARM_WEBHOOK_ALLOW_PRIVATE is off)"
    return None


def literal_refusal(host: str) -> str | None:
    """For a URL's host that is an IP address: why no webhook may ever go there, or None (a name,
    or an address allowed at least where private networks are)."""
    try:
        ip: IPAddress = ipaddress.ip_address(host)
    except ValueError:
        try:  # the forms resolvers take too: 2852039166, 0xa9fea9fe, 0251.0376.0251.0376
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None  # a name
    return refusal(ip, allow_private=True)


def resolve(host: str, port: int, deadline: float, allow_private: bool
            ) -> list[tuple[int, Any]]:
    """The vetted addresses of ``host`` as (family, sockaddr), resolved by ``deadline``
    (``time.monotonic()``): TimeoutError past it, socket.gaierror for a name that does not
    resolve, ReceiverRefused when none of its addresses is allowed."""
    found: list[Any] = []
    failed: list[BaseException] = []

    def lookup() -> None:
        try:
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failed.append(exc)

    # the system resolver takes no deadline: it runs on a thread of its own, left behind if slow
    thread = threading.Thread(target=lookup, daemon=True, name="genfarm-webhook-resolve")
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        raise TimeoutError
    if failed:
        raise failed[0]
    allowed, why = [], None
    for family, _, _, _, sockaddr in found:
        reason = refusal(ipaddress.ip_address(sockaddr[0].partition("%")[0]), allow_private)
        if reason is None:
            allowed.append((family, sockaddr))
        else:
            why = why or reason
    if not allowed:
        raise ReceiverRefused(f"receiver not allowed: its host is {why}")
    return allowed


class _Pinned(http.client.HTTPConnection):
    """An HTTP(S) connection to ``host`` made to vetted addresses only, each connect bounded by
    ``deadline``; TLS checks the certificate against ``host``."""

    def __init__(self, host: str, port: int, addresses: list[tuple[int, Any]], deadline: float,
                 tls: ssl.SSLContext | None) -> None:
        super().__init__(host, port, timeout=max(0.01, deadline - time.monotonic()))
        self._addresses, self._deadline, self._tls = addresses, deadline, tls
        self.default_port = 443 if tls else 80  # the Host header leaves the default out

    def connect(self) -> None:
        error: OSError = TimeoutError()
        for family, sockaddr in self._addresses:
            left = self._deadline - time.monotonic()
            if left <= 0:
                break
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(left)
            self.sock = sock  # before the connect: the deadline's timer shuts it down
            try:
                sock.connect(sockaddr)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._tls:  # the handshake within what is left of the deadline
                    sock.settimeout(max(0.01, self._deadline - time.monotonic()))
                    self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            except OSError as exc:
                sock.close()
                self.sock = None
                error = exc
                continue
            if time.monotonic() >= self._deadline:
                raise TimeoutError
            # each read has at most what is left (the timer ends the whole attempt anyway)
            self.sock.settimeout(max(0.01, self._deadline - time.monotonic()))
            return
        raise error


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float,
         allow_private: bool = True) -> int:
    """POST ``body`` and return the status code, within ``timeout_s`` in all (name resolution,
    connect, send and the answer's head; the body is never read). Redirects are not followed;
    no proxy is used."""
    deadline = time.monotonic() + timeout_s
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    addresses = resolve(host, port, deadline, allow_private)
    conn = _Pinned(host, port, addresses, deadline,
                   ssl.create_default_context() if https else None)
    # a socket timeout bounds each read, not the whole answer (a receiver can drip a byte at a
    # time): the timer ends the attempt at its deadline whatever the receiver does
    expired = threading.Event()
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), _abort, (conn, expired))
    timer.daemon = True
    timer.start()
    try:
        conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                     body=body, headers=headers)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        if expired.is_set() or time.monotonic() >= deadline:
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()
        conn.close()


def _abort(conn: http.client.HTTPConnection, expired: threading.Event) -> None:
    expired.set()
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked send or recv in the other thread
