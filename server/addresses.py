"""Who a client is: the peer address of a request or WebSocket, or, behind trusted reverse
proxies (PTQ4VM_TRUSTED_PROXIES), the address the proxies saw. The per-address limits
(connections, detached sessions, docs/security.md) count by it."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def parse_networks(spec: str) -> tuple[Network, ...]:
    """PTQ4VM_TRUSTED_PROXIES: comma-separated addresses or CIDR networks."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    return tuple(ipaddress.ip_network(p, strict=False) for p in parts)


def _trusted(address: str, proxies: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address(scope: Scope, proxies: tuple[Network, ...]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the last
    address in X-Forwarded-For that is not a trusted proxy (the one the proxies saw)."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if not proxies or not _trusted(peer, proxies):
        return peer
    forwarded = Headers(scope=scope).getlist("x-forwarded-for")
    hops = [h.strip() for line in forwarded for h in line.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop
    return hops[0] if hops else peer
