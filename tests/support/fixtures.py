"""Routee's callbacks as fixtures on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parents[1] / "fixtures" / "viber"
INBOUND_FIXTURES = Path(__file__).parents[1] / "fixtures" / "viber_inbound"


def fixture_bodies() -> dict[str, bytes]:
    """Every fixture callback by file name."""
    return {path.name: path.read_bytes() for path in sorted(FIXTURES.glob("*.json"))}


def inbound_bodies() -> dict[str, bytes]:
    """Every fixture inbound message (a reply) by file name."""
    return {path.name: path.read_bytes() for path in sorted(INBOUND_FIXTURES.glob("*.json"))}


def fixture(name: str) -> dict[str, Any]:
    """One fixture callback, parsed."""
    result: dict[str, Any] = json.loads((FIXTURES / name).read_bytes())
    return result


SMS_FIXTURES = Path(__file__).parents[1] / "fixtures" / "sms"
SMS_INBOUND_FIXTURES = Path(__file__).parents[1] / "fixtures" / "sms_inbound"


def sms_bodies() -> dict[str, bytes]:
    """Every fixture SMS delivery report by file name."""
    return {path.name: path.read_bytes() for path in sorted(SMS_FIXTURES.glob("*.json"))}


def sms_inbound_bodies() -> dict[str, bytes]:
    """Every fixture inbound SMS by file name."""
    return {path.name: path.read_bytes() for path in sorted(SMS_INBOUND_FIXTURES.glob("*.json"))}
