"""The one way tests wait for something: poll a condition until it holds, within a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def eventually(check: Callable[[], object], what: str, timeout: float = 15.0, *, interval: float = 0.05) -> float:
    """Poll ``check`` until it returns something true; return how long it took, or fail naming ``what``."""
    started = time.monotonic()
    while not check():
        elapsed = time.monotonic() - started
        assert elapsed < timeout, f"{what}: not within {timeout:g} s"
        time.sleep(interval)
    return time.monotonic() - started


async def eventually_async(check: Callable[[], object], what: str) -> None:
    """``eventually`` on an event loop, polling without blocking it; the caller bounds it (``asyncio.timeout``)
    when 15 s is not right."""
    try:
        async with asyncio.timeout(15):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"{what}: not within 15 s") from None
