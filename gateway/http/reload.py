"""Hot reload of the policies folder: poll every file's path, mtime and size; on a change, call each
reloader (each keeps its last good version when the new files do not load)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Event = dict[str, Any]


async def watch_folder(
    folder: Path,
    interval_s: float,
    reloaders: list[Callable[[], Event | None]],
    record: Callable[[list[Event]], Awaitable[Any]] | None = None,
) -> None:
    """`record` receives what each reload reports (new versions and file hashes, or the errors)."""
    seen = signature(folder)
    while True:
        await asyncio.sleep(interval_s)
        current = signature(folder)
        if current == seen:
            continue
        seen = current
        events = [event for reload in reloaders if (event := reload()) is not None]
        if events and record is not None:
            await record(events)


def signature(folder: Path) -> list[tuple[str, int, int]]:
    """What changed under the folder: every file's path, mtime and size."""
    found = []
    for file in sorted(folder.rglob("*")):
        try:
            stat = file.stat()
        except OSError:
            continue
        if file.is_file():
            found.append((str(file), stat.st_mtime_ns, stat.st_size))
    return found
