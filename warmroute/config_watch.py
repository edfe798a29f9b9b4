"""Notice a config file's new content the moment it lands.

Watches the file's directory (inotify through ``watchfiles``; polling where the
filesystem has no notifications) rather than the file: editors replace files by rename,
and Kubernetes updates a mounted ConfigMap by swapping the ``..data`` symlink beside it,
and neither is an event on the old file. Any event in the directory makes the watcher
read the file; only new *content* (a digest, following symlinks) calls ``on_change``,
so a touch, a rewrite with the same bytes or the reload's own read cost nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import watchfiles

logger = logging.getLogger(__name__)

# Events closer than this are one change (an editor's write + rename, a symlink swap).
_STEP_MS = 20
# Also read the file this often without an event: a change made before the watch was
# armed, or on a filesystem that drops notifications, is still noticed (one small read).
_BACKSTOP_MS = 2_000


def digest(path: Path) -> bytes | None:
    """The file's content digest, or None if it cannot be read right now."""
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
    except OSError:
        return None


class ConfigFileWatcher:
    """Calls ``on_change()`` when ``path``'s content differs from what was last seen.

    ``seen(d)`` records content the owner has read itself (a SIGHUP reload), so the
    watcher does not reload it a second time.
    """

    def __init__(self, path: Path, on_change: Callable[[], Awaitable[None]]) -> None:
        self.path = path
        self._on_change = on_change
        self._seen = digest(path)
        self._stop = asyncio.Event()

    def seen(self, content_digest: bytes | None) -> None:
        self._seen = content_digest

    async def run(self) -> None:
        """Until ``stop()``: one reload per change of content."""
        try:
            await self._watch(force_polling=None)
        except OSError as exc:  # e.g. no inotify instances left: poll instead
            logger.warning("watching %s by polling: %s", self.path, exc)
            await self._watch(force_polling=True)

    async def _watch(self, force_polling: bool | None) -> None:
        directory = self.path.parent
        async for _ in watchfiles.awatch(
            directory,
            watch_filter=None,
            step=_STEP_MS,
            stop_event=self._stop,
            recursive=False,
            force_polling=force_polling,
            poll_delay_ms=500,
            rust_timeout=_BACKSTOP_MS,
            yield_on_timeout=True,
        ):
            await self.check()

    async def check(self) -> None:
        """Reload if the content changed since last seen."""
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
