"""Notice a config file's new content the moment it lands, and nothing else.

Watches the file's directory (inotify through ``watchfiles``; polling where the
filesystem has no notifications) rather than the file: editors replace files by rename,
and Kubernetes updates a mounted ConfigMap by swapping the ``..data`` symlink beside it,
and neither is an event on the old file. Only events on the names the file depends on
wake the watcher (:class:`ConfigEvents`): the file's own name, ``..data`` and the names the
file resolves through (its symlink chain and their targets). Anything else written in the
directory (a log file beside the config is common) is dropped by the filter: no read, no
log line. A woken watcher reads the file; only new *content* (a digest, following
symlinks) calls ``on_change``, so a touch, a rewrite with the same bytes or the reload's
own read cost nothing.

A backstop reads the digest every 2 s whatever the events (a change made before the watch
was armed, or on a filesystem that drops notifications, is still noticed); it logs nothing
unless the content changed.

``watchfiles`` logs every batch of changes at INFO; its loggers are set to WARNING here
unless something already chose their level (``warmroute -vvv`` sets them to DEBUG).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import watchfiles

logger = logging.getLogger(__name__)

# Events closer than this are one change (an editor's write + rename, a symlink swap).
_STEP_MS = 20
# Read the file this often without an event (see the module docstring).
_BACKSTOP_SECONDS = 2.0
# The name Kubernetes swaps to update every file of a mounted ConfigMap at once.
CONFIGMAP_DATA = "..data"
# Symlinks followed at most (the kernel's own limit is 40).
_MAX_HOPS = 40
# The logger the file-watching library writes "N changes detected" to (and its children).
LIBRARY_LOGGER = "watchfiles"


def digest(path: Path) -> bytes | None:
    """The file's content digest, or None if it cannot be read right now."""
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
    except OSError:
        return None


def names_resolved_through(path: Path) -> frozenset[str]:
    """The names in ``path``'s directory that its content depends on: its own name, each
    symlink met while resolving it (at any component) and each such symlink's target,
    where those lie in the same directory. For a ConfigMap mount, ``warmroute.yaml`` ->
    ``..data/warmroute.yaml`` and ``..data`` -> ``..2026_12_08_...``: all three names."""
    directory = Path(os.path.abspath(path.parent))
    start = directory / path.name
    names = {path.name}
    todo = [start]
    hops = 0
    while todo and hops < _MAX_HOPS:
        current = todo.pop()
        for prefix in (*reversed(current.parents), current):
            try:
                target = os.readlink(prefix)
            except OSError:  # not a symlink, or gone
                continue
            hops += 1
            dest = Path(os.path.normpath(prefix.parent / target))
            names.update(p.name for p in (prefix, dest) if p.parent == directory)
            todo.append(Path(os.path.normpath(dest / current.relative_to(prefix))))
            break
    return frozenset(names)


class ConfigEvents:
    """The ``watch_filter``: accepts a change only if its path's name is one the config
    file depends on (see :func:`names_resolved_through`) or ``..data``.

    The accepted names are refreshed after each accepted change (a swapped ``..data``
    points elsewhere); the previous set is kept for one more round, so the old target's
    removal is still seen. Not safe across threads; watchfiles calls it from one task.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._current = names_resolved_through(path)
        self._previous: frozenset[str] = frozenset()

    @property
    def names(self) -> frozenset[str]:
        return self._current | self._previous | {CONFIGMAP_DATA}

    def refresh(self) -> None:
        fresh = names_resolved_through(self.path)
        if fresh != self._current:
            self._previous, self._current = self._current, fresh

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        if os.path.basename(path) not in self.names:
            return False
        self.refresh()
        return True


def quiet_library_logs() -> None:
    """The file-watching library's INFO lines are not ours: WARNING unless the user chose
    a level for them (``warmroute -vvv``)."""
    library = logging.getLogger(LIBRARY_LOGGER)
    if library.level == logging.NOTSET:
        library.setLevel(logging.WARNING)


class ConfigFileWatcher:
    """Calls ``on_change()`` when ``path``'s content differs from what was last seen.

    ``seen(d)`` records content the owner has read itself (a SIGHUP reload), so the
    watcher does not reload it a second time. ``on_check(cause)``, if given, is called
    each time the file is read: ``"event"`` (a change to a name it depends on) or
    ``"backstop"`` (the periodic read); an owner counts them in a metric.
    """

    def __init__(
        self,
        path: Path,
        on_change: Callable[[], Awaitable[None]],
        on_check: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self._on_change = on_change
        self._on_check = on_check
        self._seen = digest(path)
        self._stop = asyncio.Event()
        self.events = ConfigEvents(path)
        quiet_library_logs()

    def seen(self, content_digest: bytes | None) -> None:
        self._seen = content_digest

    async def run(self) -> None:
        """Until ``stop()``: one reload per change of content."""
        # Its own task: events filtered out never wake the watch loop, so a busy log
        # beside the file would starve a backstop tied to the watch's timeout.
        backstop = asyncio.create_task(self._backstop(), name="config backstop")
        try:
            try:
                await self._watch(force_polling=None)
            except OSError as exc:  # e.g. no inotify instances left: poll instead
                logger.warning("watching %s by polling: %s", self.path, exc)
                await self._watch(force_polling=True)
        finally:
            backstop.cancel()
            # Its cancellation is returned, not raised; ours (if any) still propagates.
            await asyncio.gather(backstop, return_exceptions=True)

    async def _watch(self, force_polling: bool | None) -> None:
        async for _ in watchfiles.awatch(
            self.path.parent,
            watch_filter=self.events,
            step=_STEP_MS,
            stop_event=self._stop,
            recursive=False,
            force_polling=force_polling,
            poll_delay_ms=500,
        ):
            await self.check("event")

    async def _backstop(self) -> None:
        while not self._stop.is_set():
            try:
                async with asyncio.timeout(_BACKSTOP_SECONDS):
                    await self._stop.wait()
            except TimeoutError:
                self.events.refresh()
                await self.check("backstop")

    async def check(self, cause: str = "event") -> None:
        """Reload if the content changed since last seen."""
        if self._on_check is not None:
            self._on_check(cause)
        now = await asyncio.to_thread(digest, self.path)
        if now is None or now == self._seen:
            return
        self._seen = now
        try:
            await self._on_change()
        except Exception:  # the watcher must survive anything a reload throws
            logger.exception("config reload from %s failed", self.path)

    def stop(self) -> None:
        self._stop.set()
