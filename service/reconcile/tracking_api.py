"""A client of Routee's Viber tracking API: a message's current status, a campaign's messages page by page.

Manners, as Routee's API expects them:

- **Token**: OAuth 2 client credentials (``POST {auth}/oauth/token``, Basic
  ``applicationId:applicationSecret``), cached until shortly before it
  expires. A ``401``/``403`` from the API means the token is no longer good:
  one new token and one retry. A ``401``/``403`` from the token endpoint means
  the credentials are wrong: ``CredentialsRejectedError`` (no retry can help).
- **Rate**: at most ``rate`` tracking calls a second, spaced evenly.
- **Back-off**: ``429`` and ``5xx`` (and a connection that fails) are retried
  after ``Retry-After`` when given, otherwise 1, 2, 4… seconds, a few times;
  then ``TrackingApiUnavailableError``.

The secret is never logged and never part of an error message.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from service.config.settings import Credentials
from service.domain.errors import CredentialsRejectedError, TrackingApiUnavailableError
from service.domain.rules import SMS, VIBER

_LOGGER = logging.getLogger("service.tracking_api")

DEFAULT_API_URL = "https://connect.routee.net"
DEFAULT_AUTH_URL = "https://auth.routee.net"
#: A token is renewed this long before Routee says it expires (or at 90 % of its life, if that is sooner).
TOKEN_MARGIN = 60.0

#: Told of every call: (endpoint: token, message, campaign, sms_message or sms_campaign; outcome: ok, not_found,
#: rate_limited, server_error, unreachable, unauthorized).
Observe = Callable[[str, str], None]


def _ignore(endpoint: str, outcome: str) -> None:
    pass


@dataclass(frozen=True)
class CampaignPage:
    """One page of a campaign's messages."""

    items: list[dict[str, Any]]
    last: bool
    total_pages: int


class TrackingApi:
    """Routee's tracking API, called with the manners above."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        api_url: str = DEFAULT_API_URL,
        auth_url: str = DEFAULT_AUTH_URL,
        rate: float = 5.0,
        attempts: int = 5,
        timeout: float = 10.0,
        observe: Observe | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._credentials = credentials
        self._api_url = api_url.rstrip("/")
        self._auth_url = auth_url.rstrip("/")
        self._interval = 1.0 / rate
        self._attempts = attempts
        self._observe = observe or _ignore
        self._clock = clock
        self._sleep = sleep
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False)
        self._token: str | None = None
        self._token_expires = 0.0
        self._next_call = 0.0
        self._token_lock = asyncio.Lock()

    async def close(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    async def message(self, tracking_id: str, channel: int = VIBER) -> list[dict[str, Any]] | None:
        """The current status of one message as the API returns it (an SMS: of each of its parts); None when Routee
        does not know it."""
        if channel == SMS:
            body = await self._get("sms_message", f"{self._api_url}/sms/tracking/single/{_segment(tracking_id)}", {})
            if isinstance(body, dict):  # One part, or a page of them.
                body = body.get("content", [body])
        else:
            body = await self._get("message", f"{self._api_url}/viber/tracking/{_segment(tracking_id)}", {})
            body = [body] if isinstance(body, dict) else body
        if body is not None and not (isinstance(body, list) and all(isinstance(item, dict) for item in body)):
            raise TrackingApiUnavailableError("Routee's message lookup answered something other than objects")
        return body

    async def campaign_page(
        self, campaign_tracking_id: str, page: int, size: int = 100, channel: int = VIBER
    ) -> CampaignPage:
        """One page (from 0) of a campaign's messages of a channel (an SMS's parts each count); an unknown campaign
        is an empty last page."""
        path = "sms/tracking/campaign" if channel == SMS else "viber/tracking/campaign"
        body = await self._get(
            "sms_campaign" if channel == SMS else "campaign",
            f"{self._api_url}/{path}/{_segment(campaign_tracking_id)}",
            {"page": page, "size": size},
        )
        if body is None:
            return CampaignPage([], True, 0)
        items = [item for item in body.get("content") or [] if isinstance(item, dict)]
        return CampaignPage(items, bool(body.get("last", True)), int(body.get("totalPages") or 0))

    async def _get(self, endpoint: str, url: str, params: dict[str, Any]) -> Any:
        renewed = False
        for attempt in range(self._attempts):
            await self._pace()
            token = await self._current_token()
            try:
                response = await self._client.get(url, params=params, headers={"Authorization": f"Bearer {token}"})
            except httpx.HTTPError as ex:
                self._observe(endpoint, "unreachable")
                await self._back_off(attempt, None, f"{endpoint}: {ex.__class__.__name__}")
                continue
            if response.status_code in (401, 403) and not renewed:
                self._observe(endpoint, "unauthorized")
                self._token, renewed = None, True  # Expired early, or revoked: one new token, one retry.
                continue
            if response.status_code in (401, 403):
                self._observe(endpoint, "unauthorized")
                raise CredentialsRejectedError(
                    f"Routee refused a new token of application {self._credentials.application_id}"
                    f" for {endpoint} lookups (HTTP {response.status_code})"
                )
            if response.status_code == 404:
                self._observe(endpoint, "not_found")
                return None
            if response.status_code == 429 or response.status_code >= 500:
                self._observe(endpoint, "rate_limited" if response.status_code == 429 else "server_error")
                await self._back_off(attempt, response, f"{endpoint}: HTTP {response.status_code}")
                continue
            if response.is_success:
                self._observe(endpoint, "ok")
                try:
                    return response.json()
                except ValueError:
                    raise TrackingApiUnavailableError(f"Routee's {endpoint} answer is not JSON") from None
            self._observe(endpoint, "error")
            raise TrackingApiUnavailableError(f"Routee answered a {endpoint} lookup with HTTP {response.status_code}")
        raise TrackingApiUnavailableError(f"Routee's tracking API did not answer after {self._attempts} attempts")

    async def _pace(self) -> None:
        """At most ``rate`` calls a second."""
        now = self._clock()
        wait = self._next_call - now
        self._next_call = max(now, self._next_call) + self._interval
        if wait > 0:
            await self._sleep(wait)

    async def _back_off(self, attempt: int, response: httpx.Response | None, what: str) -> None:
        delay = min(60.0, 2.0**attempt)
        if response is not None and (after := _retry_after(response.headers.get("Retry-After"))) is not None:
            delay = min(300.0, after)
        if attempt + 1 < self._attempts:
            _LOGGER.info("Routee's tracking API asks to wait", extra={"call": what, "seconds": delay})
            await self._sleep(delay)

    async def _current_token(self) -> str:
        async with self._token_lock:
            if self._token is None or self._clock() >= self._token_expires:
                self._token, lifetime = await self._new_token()
                self._token_expires = self._clock() + max(0.0, min(lifetime - TOKEN_MARGIN, lifetime * 0.9))
            return self._token

    async def _new_token(self) -> tuple[str, float]:
        for attempt in range(self._attempts):
            try:
                response = await self._client.post(
                    f"{self._auth_url}/oauth/token",
                    data={"grant_type": "client_credentials"},
                    auth=(self._credentials.application_id, self._credentials.secret),
                )
            except httpx.HTTPError as ex:
                self._observe("token", "unreachable")
                await self._back_off(attempt, None, f"token: {ex.__class__.__name__}")
                continue
            if response.status_code in (400, 401, 403):
                self._observe("token", "unauthorized")
                raise CredentialsRejectedError(
                    f"Routee refused the credentials of application {self._credentials.application_id}"
                    f" (HTTP {response.status_code} from {self._auth_url}/oauth/token): check the application id"
                    " and secret"
                )
            if response.status_code == 429 or response.status_code >= 500:
                self._observe("token", "rate_limited" if response.status_code == 429 else "server_error")
                await self._back_off(attempt, response, f"token: HTTP {response.status_code}")
                continue
            try:
                body = response.json()
                token, lifetime = str(body["access_token"]), float(body.get("expires_in") or 3600)
            except (ValueError, KeyError, TypeError):
                self._observe("token", "error")
                raise TrackingApiUnavailableError(
                    f"Routee's token endpoint answered HTTP {response.status_code} without a token"
                ) from None
            self._observe("token", "ok")
            return token, lifetime
        raise TrackingApiUnavailableError(f"Routee's token endpoint did not answer after {self._attempts} attempts")


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _segment(identifier: str) -> str:
    """An id as one path segment: every character but the unreserved ones percent-encoded, so that no stored id
    (``../../accounts/me``, ``x?y#``) can point the bearer token at another resource."""
    return quote(identifier, safe="")
