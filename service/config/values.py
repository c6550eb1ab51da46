"""The values options take: addresses, networks, databases and URLs, each with its parser (ValueError when a
value is wrong), and how a database is named where a password must not show."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class HostPort:
    """A host (name or IP literal, without brackets) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: str, *, default_port: int | None = None) -> HostPort:
    """Parse ``HOST:PORT`` (``[V6]:PORT`` for IPv6); the port may be optional."""
    host, sep, port_text = value.rpartition(":")
    if value.startswith("[") and "]" in value:
        close = value.index("]")
        host, rest = value[1:close], value[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        port_text, sep = rest[1:], rest[:1]
    elif ":" in host or (not sep and default_port is None):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    elif not sep:
        host, port_text = value, ""
    if not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if not port_text:
        if default_port is None:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return HostPort(host, default_port)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port from 0 to 65535, got {port_text!r}")
    return HostPort(host, int(port_text))


def parse_dns_server(value: str) -> HostPort | None:
    """Parse ``IP[:PORT]``; empty means the system resolver."""
    if not value:
        return None
    try:  # A bare IPv6 address has colons but no port.
        return HostPort(str(ipaddress.ip_address(value)), 53)
    except ValueError:
        pass
    server = parse_host_port(value, default_port=53)
    try:
        ipaddress.ip_address(server.host)
    except ValueError:
        raise ValueError(f"expected an IP address with an optional port, got {value!r}") from None
    return server


def parse_cidr(value: str) -> IPNetwork:
    """Parse a network such as ``10.0.0.0/8`` or a single address."""
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"expected a CIDR such as 10.0.0.0/8, got {value!r}") from None


def parse_database(value: str) -> str:
    """Accept a SQLite file path or a PostgreSQL URI (``postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME``)."""
    if not value.strip():
        raise ValueError("expected a file path or a postgresql:// URI, got ''")
    if value.startswith(("postgresql://", "postgres://")):
        from psycopg.conninfo import conninfo_to_dict

        try:
            parts = conninfo_to_dict(value)
            if not all(port.isdigit() for port in str(parts.get("port", "5432")).split(",")):
                raise ValueError("the port must be a number")
        except Exception:  # psycopg's message may quote the URI, password included: say it without it.
            raise ValueError(
                f"expected a libpq URI such as postgresql://USER@HOST:5432/DBNAME, got {redact(value)!r}"
            ) from None
    return value


#: Query parameters of a libpq URI whose values are secrets (``password``, ``sslpassword``, and any like them).
_SECRET_PARAMETER = re.compile(r"pass|secret|token", re.IGNORECASE)


def redact(database: str) -> str:
    """The ``--database`` value fit for logs and errors: every secret of a URI replaced by ``***``, the password in
    its user information and secret query parameters (``?password=``, ``&sslpassword=``) alike."""
    if not database.startswith(("postgresql://", "postgres://")):
        return database
    parts = urlsplit(database)
    netloc = parts.netloc
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = "&".join(
        f"{key}=***" if _SECRET_PARAMETER.search(unquote(key)) else f"{key}{separator}{value}"
        for key, separator, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


#: The largest value any numeric option takes: infinity, NaN and absurd values stop start-up (exit status 2)
#: rather than a loop, a timer or a SQL bound that overflows later.
MAX_OPTION_VALUE = 1e9


def positive(kind: type[int] | type[float], most: float = MAX_OPTION_VALUE) -> Callable[[str], Any]:
    def parse(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"expected a positive number, got {value!r}") from None
        if not math.isfinite(number) or number <= 0:
            raise ValueError(f"expected a positive number, got {value!r}")
        if number > most:
            raise ValueError(f"expected a number of at most {most:g}, got {value!r}")
        return number

    return parse


def parse_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) URL, got {value!r}")
    return value.rstrip("/")


def choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.upper() in (choice.upper() for choice in choices):
            return next(choice for choice in choices if choice.upper() == value.upper())
        raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")

    return parse
