"""What the real-vLLM tests do to a replica: read its signals, hold streams open on it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from tests.helpers import wait_for
from tests.vllm.server import VllmServer
from warmroute.discovery.signals import ReplicaSignals, parse_signals


def session() -> aiohttp.ClientSession:
    # No request of a test may hang it: a minute is far above any answer here.
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))


async def metrics_text(http: aiohttp.ClientSession, server: VllmServer) -> str:
    async with http.get(server.url + "/metrics") as r:
        r.raise_for_status()
        return await r.text()


async def signals(http: aiohttp.ClientSession, server: VllmServer) -> ReplicaSignals:
    return parse_signals(await metrics_text(http, server))


async def wait_signals(
    http: aiohttp.ClientSession,
    server: VllmServer,
    test: Callable[[ReplicaSignals], bool],
    what: str,
    timeout: float = 60.0,
    streams: Streams | None = None,
) -> ReplicaSignals:
    """The first signals of ``server`` that pass ``test`` (scraped every 20 ms); a failure
    says what ``streams`` that already ended got."""
    seen: list[ReplicaSignals] = []

    async def ok() -> bool:
        seen.append(await signals(http, server))
        return test(seen[-1])

    try:
        await wait_for(ok, timeout, interval=0.02, what=f"{what} on {server.address}")
    except AssertionError as e:
        ended = streams.ended() if streams is not None else []
        # (running, waiting) as it changed, so a failure shows what the server went through.
        history = [(x.running, x.waiting) for x in seen]
        changes = [h for i, h in enumerate(history) if i == 0 or h != history[i - 1]]
        raise AssertionError(
            f"{e}; last signals: {seen[-1] if seen else None}; (running, waiting) seen: "
            f"{changes}; streams ended: {ended}"
        ) from None
    return seen[-1]


async def idle(http: aiohttp.ClientSession, server: VllmServer) -> ReplicaSignals:
    return await wait_signals(http, server, lambda s: s.in_flight == 0, "nothing in flight")


@dataclass
class Answer:
    status: int
    done: bool  # the stream ended with ``data: [DONE]``
    tokens: int  # completion tokens, as the stream's final usage chunk says
    error: str = ""  # what a non-200 answer said (its body's start)


async def completion(http: aiohttp.ClientSession, url: str, model: str, max_tokens: int) -> Answer:
    """One streamed completion of exactly ``max_tokens`` tokens (``ignore_eos``), read whole;
    the model only in the JSON body, as OpenAI clients send it."""
    body = {"model": model, "prompt": "hello", "max_tokens": max_tokens, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    async with http.post(url + "/v1/completions", json=body) as r:
        if r.status != 200:
            return Answer(r.status, False, 0, (await r.text())[:300])
        done, tokens = False, 0
        async for raw in r.content:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                usage = json.loads(line[6:]).get("usage") or {}
                tokens = usage.get("completion_tokens", tokens)
        return Answer(r.status, done, tokens)


class Streams:
    """Long streams held open on one server until :meth:`close` (closing a stream makes
    vLLM abort its request)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.tasks: list[asyncio.Task[Answer]] = []

    def open(self, models: Sequence[str], max_tokens: int = 900) -> None:
        for m in models:
            self.tasks.append(asyncio.create_task(completion(self.http, self.url, m, max_tokens)))

    def ended(self) -> list[Answer | BaseException]:
        """What the streams that already ended got (an answer, or what they raised)."""
        return [t.exception() or t.result() for t in self.tasks if t.done() and not t.cancelled()]

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    async def __aenter__(self) -> Streams:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
