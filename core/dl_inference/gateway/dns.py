"""A small DNS client for A/AAAA lookups against a chosen nameserver (RFC 1035).

The system resolver (``getaddrinfo``) is the default for DNS discovery, as in a
Kubernetes pod. ``discovery.nameserver`` sends the queries to a given server instead
(a sidecar, a service-discovery DNS such as Consul's, or a test's dnsmasq), over UDP
with a TCP retry when the answer is truncated.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import struct

A, AAAA, CLASS_IN = 1, 28, 1


class DnsError(OSError):
    """The nameserver could not be asked or answered with an error."""


def build_query(name: str, qtype: int) -> tuple[int, bytes]:
    """A recursive query for ``name`` of type ``qtype``; returns (id, message)."""
    query_id = secrets.randbits(16)
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    labels = b"".join(
        bytes([len(label)]) + label.encode("idna") for label in name.rstrip(".").split(".")
    )
    return query_id, header + labels + b"\0" + struct.pack("!HH", qtype, CLASS_IN)


def _skip_name(message: bytes, offset: int) -> int:
    while True:
        if offset >= len(message):
            raise DnsError("truncated name in the answer")
        length = message[offset]
        if length & 0xC0 == 0xC0:  # a compression pointer ends the name
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length


def parse_answer(message: bytes, query_id: int) -> tuple[list[str], bool]:
    """(addresses from A/AAAA records, truncated flag) of a response to ``query_id``."""
    if len(message) < 12:
        raise DnsError("answer shorter than a DNS header")
    ident, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", message[:12])
    if ident != query_id:
        raise DnsError("answer to another query")
    rcode = flags & 0x000F
    if rcode == 3:
        return [], False  # NXDOMAIN: the name has no nodes now
    if rcode:
        raise DnsError(f"nameserver answered rcode {rcode}")
    offset = 12
    for _ in range(qdcount):
        offset = _skip_name(message, offset) + 4
    addresses = []
    for _ in range(ancount):
        offset = _skip_name(message, offset)
        rtype, rclass, _ttl, length = struct.unpack("!HHIH", message[offset : offset + 10])
        offset += 10
        data = message[offset : offset + length]
        offset += length
        if rclass == CLASS_IN and rtype == A and length == 4:
            addresses.append(str(ipaddress.IPv4Address(data)))
        elif rclass == CLASS_IN and rtype == AAAA and length == 16:
            addresses.append(str(ipaddress.IPv6Address(data)))
    return addresses, bool(flags & 0x0200)


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def _ask_udp(server: tuple[str, int], query: bytes, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Datagram, remote_addr=server)
    try:
        transport.sendto(query)
        return await asyncio.wait_for(protocol.answer, timeout)
    finally:
        transport.close()


async def _ask_tcp(server: tuple[str, int], query: bytes, timeout: float) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*server), timeout)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), timeout))
        return await asyncio.wait_for(reader.readexactly(length), timeout)
    finally:
        writer.close()


async def lookup(name: str, server: tuple[str, int], timeout: float = 2.0) -> list[str]:
    """Every A and AAAA address of ``name`` according to ``server``, sorted."""
    found: set[str] = set()
    errors = []
    for qtype in (A, AAAA):
        query_id, query = build_query(name, qtype)
        try:
            answer = await _ask_udp(server, query, timeout)
            addresses, truncated = parse_answer(answer, query_id)
            if truncated:
                addresses, _ = parse_answer(await _ask_tcp(server, query, timeout), query_id)
        except (OSError, TimeoutError) as exc:
            errors.append(exc)  # one record type failing (say, AAAA refused) is not fatal
            continue
        found.update(addresses)
    if len(errors) == 2:
        raise DnsError(f"nameserver {server[0]}:{server[1]} did not answer: {errors[0]!r}")
    return sorted(found)
