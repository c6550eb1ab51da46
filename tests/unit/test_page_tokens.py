"""Page tokens: ours round-trip, anything else is INVALID_ARGUMENT, whatever its size, shape or depth."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.api import page_tokens
from service.domain.errors import InvalidArgumentError
from service.domain.limits import MAX_ID_LENGTH


def encode(document: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


class TestPageTokens:
    """make and read."""

    def test_a_token_of_the_longest_ids_round_trips(self) -> None:
        """Ids at the bound, of four-byte characters, make a token that reads back (and fits the length bound)."""
        campaign, after = "\U0001f600" * MAX_ID_LENGTH, "\U0001f601" * MAX_ID_LENGTH
        token = page_tokens.make(campaign, frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9}), after)
        assert len(token) <= page_tokens.MAX_PAGE_TOKEN_LENGTH
        assert page_tokens.read(token, campaign, frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9})) == after

    @pytest.mark.parametrize(
        "token",
        [
            "not-a-token",
            "%%%",
            base64.urlsafe_b64encode(b"\xff\xfe").decode(),
            encode([]),
            encode({"v": 1, "a": "m1"}),  # no campaign, no statuses
            encode({"v": 1, "a": "m1", "c": 7, "s": []}),
            encode({"v": 1, "a": "m1", "c": "c1", "s": "all"}),
            encode({"v": 2, "a": "m1", "c": "c1", "s": []}),
            encode({"v": 1, "a": ["m1"], "c": "c1", "s": []}),
            base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode(),
            "A" * (page_tokens.MAX_PAGE_TOKEN_LENGTH + 1),
        ],
        ids=[
            "text", "not-base64", "not-utf8", "a-list", "missing-fields", "campaign-not-text", "statuses-not-list",
            "other-version", "after-not-text", "nested-5000-deep", "too-long",
        ],
    )  # fmt: skip
    def test_anything_malformed_is_invalid_argument(self, token: str) -> None:
        with pytest.raises(InvalidArgumentError):
            page_tokens.read(token, "c1", frozenset())

    @given(st.text(max_size=200))
    def test_no_text_raises_anything_else(self, token: str) -> None:
        """Whatever a client sends, the answer is a page start or INVALID_ARGUMENT, never an internal error."""
        with contextlib.suppress(InvalidArgumentError):
            page_tokens.read(token, "c1", frozenset())
