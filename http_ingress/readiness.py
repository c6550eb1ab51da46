"""Readiness: whether a worker can keep callbacks now — its store answers and its DNS allowlist (when on) is
fresh. ``/readyz`` answers with it, and each worker samples it into ``routee_callbacks_ready`` for alerts."""

from __future__ import annotations

import asyncio
from typing import Any

from http_ingress.allowlist import Allowlist
from service.domain.errors import RouteeCallbacksError
from service.log.ingest import Ingest


class Readiness:
    """The readiness checks of one worker."""

    def __init__(self, ingest: Ingest, allowlist: Allowlist, *, timeout: float = 2.0) -> None:
        self._ingest = ingest
        self._allowlist = allowlist
        self._timeout = timeout

    async def checks(self) -> dict[str, dict[str, Any]]:
        """Each check by name (store, allowlist): ``ready`` and what an operator needs to know."""
        checks: dict[str, dict[str, Any]] = {}
        try:
            await asyncio.wait_for(self._ingest.probe(), self._timeout)
            checks["store"] = {"ready": True}
        except (RouteeCallbacksError, TimeoutError) as ex:
            checks["store"] = {"ready": False, "error": str(ex) or "the store did not answer in time"}
        if self._allowlist.dns is not None:
            checks["allowlist"] = self._allowlist.dns.status()
        return checks
