"""A gateway's subset hint, resolved against a pool's replicas (endpoint-picker mode).

The hint (``envoy.lb.subset_hint`` in the Endpoint Picker Protocol, parsed by
``warmroute.epp.messages.subset_hint``) lists the endpoints the request may go to. An
``ip:port`` entry names that replica; a bare IP (the reference picker matches by IP alone)
names every replica on that IP. Entries naming no replica of the pool are dropped:
replicas come from discovery, not from the hint.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def eligible_addresses(hint: Iterable[str], replicas: Iterable[str]) -> frozenset[str]:
    """The addresses among ``replicas`` that ``hint`` allows (module doc)."""
    exact: set[str] = set()
    hosts: set[str] = set()
    for entry in hint:
        if _is_ip(entry.strip("[]")):
            hosts.add(entry.strip("[]"))
        else:
            exact.add(entry)
    allowed = set()
    for address in replicas:
        if address in exact or (hosts and address.rpartition(":")[0].strip("[]") in hosts):
            allowed.add(address)
    return frozenset(allowed)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
