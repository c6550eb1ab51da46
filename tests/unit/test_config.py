"""Options: flags, environment variables, and one-line errors naming the option."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from service.config import HostPort, Settings, load_settings, parse_host_port
from service.errors import ConfigError


class TestLoadSettings:
    """Flags, variables and defaults."""

    def test_defaults(self) -> None:
        """No flags and no variables give the documented defaults."""
        settings = load_settings({}, {})
        assert settings == Settings()
        assert settings.http_bind == HostPort("0.0.0.0", 8080)
        assert settings.grpc_bind == HostPort("0.0.0.0", 50051)
        assert settings.database == Path("routee-callbacks.db")
        assert settings.allowlist_host == "callbacksallow.routee.net"

    def test_environment_and_flag_precedence(self) -> None:
        """Variables set options; a flag wins over its variable; lists are comma-separated."""
        environ = {
            "ROUTEE_CALLBACKS_HTTP_BIND": "127.0.0.1:9000",
            "ROUTEE_CALLBACKS_GRPC_BIND": "127.0.0.1:9001",
            "ROUTEE_CALLBACKS_ALLOW_CIDR": "10.0.0.0/8,192.168.0.0/16",
            "ROUTEE_CALLBACKS_ALLOWLIST_HOST": "",
        }
        settings = load_settings({"http_bind": "[::1]:7000"}, environ)
        assert settings.http_bind == HostPort("::1", 7000)
        assert settings.grpc_bind == HostPort("127.0.0.1", 9001)
        assert settings.allow_cidrs == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.0.0/16"))
        assert settings.allowlist_host == ""

    @pytest.mark.parametrize(
        ("flags", "message"),
        [
            ({"http_bind": "nonsense"}, "--http-bind: expected HOST:PORT, got 'nonsense'"),
            ({"grpc_bind": "host:99999"}, "--grpc-bind: expected a port from 0 to 65535"),
            ({"allow_cidrs": ["10.0.0.0/33"]}, "--allow-cidr: expected a CIDR"),
            ({"dns_server": "dns.example:53"}, "--dns-server: expected an IP address"),
            ({"dns_min_ttl": "-1"}, "--dns-min-ttl: expected a positive number"),
            ({"dns_min_ttl": "600"}, "--dns-min-ttl: must not exceed --dns-max-ttl"),
            ({"sqlite_synchronous": "OFF"}, "--sqlite-synchronous: expected one of FULL, NORMAL"),
            ({"http_bind": "127.0.0.1:5000", "grpc_bind": "127.0.0.1:5000"}, "--grpc-bind: must differ"),
        ],
    )
    def test_bad_values_name_the_option(self, flags: dict[str, object], message: str) -> None:
        """A bad value raises ConfigError whose message starts with the option."""
        with pytest.raises(ConfigError) as caught:
            load_settings(flags, {})  # type: ignore[arg-type]
        assert str(caught.value).startswith(message)

    def test_bad_variable_names_the_option(self) -> None:
        """A bad variable is reported under its option."""
        with pytest.raises(ConfigError, match=r"^--http-bind"):
            load_settings({}, {"ROUTEE_CALLBACKS_HTTP_BIND": "x"})

    def test_more_than_one_worker_is_refused(self) -> None:
        """WEB_CONCURRENCY other than 1 would split the broker; it is refused."""
        with pytest.raises(ConfigError, match="WEB_CONCURRENCY"):
            load_settings({}, {"WEB_CONCURRENCY": "4"})


class TestHostPort:
    """HOST:PORT parsing."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("0.0.0.0:8080", HostPort("0.0.0.0", 8080)),
            ("localhost:1", HostPort("localhost", 1)),
            ("[::]:50051", HostPort("::", 50051)),
        ],
    )
    def test_valid(self, text: str, expected: HostPort) -> None:
        """Names, IPv4 and bracketed IPv6 parse, and print back the same."""
        assert parse_host_port(text) == expected
        assert str(expected) == text

    @pytest.mark.parametrize("text", ["8080", ":8080", "::1:80", "[::1]", "host:", "host:http"])
    def test_invalid(self, text: str) -> None:
        """Anything else is refused."""
        with pytest.raises(ValueError, match="expected"):
            parse_host_port(text)
