"""Hot reload of the policies folder: poll every file's path, mtime and size; on a change, call each
reloader (each keeps its last good version when the new files do not load)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path


async def watch_folder(folder: Path, interval_s: float, reloaders: list[Callable[[], None]]) -> None:
    seen = signature(folder)
    while True:
        await asyncio.sleep(interval_s)
        current = signature(folder)
        if current == seen:
            continue
        seen = current
        for reload in reloaders:
            reload()


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
