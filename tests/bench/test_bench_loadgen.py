"""The load generator's HTTP/1.1 response parsing (bench/lib/loadgen.py), on a fake transport."""

from __future__ import annotations

import asyncio

import pytest

from bench.lib.loadgen import Outcome, _Connection, http_request


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True


def _connection() -> tuple[_Connection, _Transport]:
    conn, transport = _Connection(), _Transport()
    conn.connection_made(transport)
    return conn, transport


async def test_response_split_anywhere_completes_once_whole() -> None:
    conn, transport = _connection()
    waiter = conn.send(b"GET / HTTP/1.1\r\n\r\n")
    assert transport.written == b"GET / HTTP/1.1\r\n\r\n"
    response = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nfull!"
    for i in range(len(response)):
        conn.data_received(response[i : i + 1])
        assert waiter.done() == (i == len(response) - 1)
    assert waiter.result() == 503
    assert conn.reusable


async def test_keep_alive_carries_the_next_response() -> None:
    conn, _ = _connection()
    first = conn.send(b"x")
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    second = conn.send(b"y")
    conn.data_received(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
    assert (first.result(), second.result()) == (200, 204)


async def test_connection_close_makes_it_single_use() -> None:
    conn, _ = _connection()
    waiter = conn.send(b"x")
    conn.data_received(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
    assert waiter.result() == 200
    assert not conn.reusable


async def test_lost_connection_fails_the_waiting_request() -> None:
    conn, _ = _connection()
    waiter = conn.send(b"x")
    conn.connection_lost(None)
    with pytest.raises(ConnectionError):
        waiter.result()


def test_request_bytes_carry_model_and_service_time() -> None:
    raw = http_request("127.0.0.1", 123.4567)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/completions HTTP/1.1\r\n")
    assert b"\r\nx-model: sim-model" in head
    assert b"\r\nx-sim-service-ms: 123.457" in head
    assert body == b"{}"
    assert b"x-sim-service-ms" not in http_request("h")


def test_outcome_latency_counts_from_the_scheduled_time() -> None:
    o = Outcome(index=0, scheduled=1.0, sent=1.5, done=3.0, status=200)
    assert o.latency == 2.0
    assert o.ok
    assert not Outcome(0, 0.0, 0.0, 1.0, 503).ok
