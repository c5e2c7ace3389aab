"""Who the client is: the one place that decides a request's client address.

Throttles count per client address (failed API keys, failed sign-ins, anonymous expensive calls),
so the address must be one the client cannot choose. Behind a reverse proxy every request comes from
the proxy (REMOTE_ADDR); the proxy names the client in X-Forwarded-For by appending the address it
received the request from. A client may send its own X-Forwarded-For, so only the entries appended
by proxies the operator trusts (ORCHESTRATOR_TRUSTED_PROXIES) are believed, read from the right:

- unset or 0: no proxy; the client is REMOTE_ADDR and the header is ignored.
- a number N of proxy hops: the N-th entry from the right is the client, as Werkzeug's ProxyFix
  and DRF's NUM_PROXIES read it. With fewer entries than hops the request did not come through
  the proxies, and REMOTE_ADDR is the client.
- networks: starting at REMOTE_ADDR, each address inside a trusted network is a proxy and the
  entry left of it is believed; the first address outside them (or the leftmost) is the client.
  A request whose REMOTE_ADDR is not a trusted proxy keeps REMOTE_ADDR whatever its header says.

Entries left of the client's are whatever the client sent; they are never read.
"""

import ipaddress

from django.conf import settings


def _address(text):
    """An IP address, or None for anything else; ::ffff:10.0.0.1 (a dual-stack socket's IPv4) is 10.0.0.1."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


def client_address(request):
    """The client's address as a string: REMOTE_ADDR, or X-Forwarded-For through trusted proxies only."""
    meta = request.META
    remote = meta.get("REMOTE_ADDR") or "unknown"
    trusted = settings.ORCHESTRATOR["TRUSTED_PROXIES"]
    if not trusted:
        return remote
    forwarded = [entry.strip() for entry in meta.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    forwarded = [entry for entry in forwarded if entry]
    if isinstance(trusted, int):
        if len(forwarded) < trusted:
            return remote
        client = _address(forwarded[-trusted])
        return str(client) if client else remote
    current = _address(remote)
    if current is None:
        return remote
    for entry in reversed(forwarded):
        if not any(current in network for network in trusted):
            break  # `current` is not a proxy we trust: it is the client
        previous = _address(entry)
        if previous is None:  # not written by a proxy: stop at the last address one wrote
            break
        current = previous
    return str(current)
