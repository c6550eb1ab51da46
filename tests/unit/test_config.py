"""Options: flags, environment variables, and one-line errors naming the option."""

from __future__ import annotations

import ipaddress

import pytest

from service.config.settings import Settings, load_settings
from service.config.values import HostPort, parse_host_port, redact
from service.domain.errors import ConfigError


class TestLoadSettings:
    """Flags, variables and defaults."""

    def test_defaults(self) -> None:
        """No flags and no variables give the documented defaults."""
        settings = load_settings({}, {})
        assert settings == Settings()
        assert settings.http_bind == HostPort("0.0.0.0", 8080)
        assert settings.grpc_bind == HostPort("0.0.0.0", 50051)
        assert settings.database == "routee-callbacks.db"
        assert settings.workers == 1
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
            ({"quarantine_max_mb": "inf"}, "--quarantine-max-mb: expected a positive number, got 'inf'"),
            ({"header_timeout": "nan"}, "--header-timeout: expected a positive number, got 'nan'"),
            ({"retention_hours": "NaN"}, "--retention-hours: expected a positive number"),
            ({"body_timeout": "-inf"}, "--body-timeout: expected a positive number"),
            ({"max_streams": "1e3"}, "--max-streams: expected a positive number"),
            ({"retention_hours": "1e7"}, "--retention-hours: expected a number of at most 876000"),
            ({"quarantine_days": "40000"}, "--quarantine-days: expected a number of at most 36500"),
            ({"shutdown_grace": "1e10"}, "--shutdown-grace: expected a number of at most 1e+09"),
            ({"reply_retention_hours": "24"}, "--reply-retention-hours: must be at least 48"),
            ({"campaign_retention_days": "0"}, "--campaign-retention-days: expected a positive number"),
            ({"store_personal_data": "some"}, "--store-personal-data: expected one of full, masked, none"),
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

    def test_several_workers_need_a_fixed_grpc_port(self) -> None:
        """Workers share the gRPC port, so port 0 (a different free port each) is refused with them."""
        with pytest.raises(ConfigError, match=r"^--grpc-bind: a fixed port"):
            load_settings({"workers": "2", "grpc_bind": "127.0.0.1:0"}, {})
        assert load_settings({"workers": "2"}, {}).workers == 2

    @pytest.mark.parametrize(
        "value", ["routee.db", "/var/lib/routee/x.db", "postgresql://routee@db:5432/routee", "postgres:///routee"]
    )
    def test_database_is_a_path_or_a_postgresql_uri(self, value: str) -> None:
        """Both engines' values are accepted as given."""
        assert load_settings({"database": value}, {}).database == value

    @pytest.mark.parametrize(
        "value", ["postgresql://routee:s3cret@db:notaport/routee", "postgresql://routee:s3cret@db/routee?nope=1"]
    )
    def test_a_bad_uri_is_refused_without_its_secrets(self, value: str) -> None:
        """A URI libpq cannot use is a configuration error, and the message hides the password."""
        with pytest.raises(ConfigError) as caught:
            load_settings({"database": value}, {})
        assert str(caught.value).startswith("--database: expected a libpq URI")
        assert "s3cret" not in str(caught.value)
        assert "routee:***@db" in str(caught.value)


class TestRedact:
    """Secrets of a database URI never reach a log line or an error."""

    @pytest.mark.parametrize(
        ("uri", "shown"),
        [
            ("postgresql://routee:s3cret@db/routee", "postgresql://routee:***@db/routee"),
            ("postgresql://routee:s3cret@db:5432/routee?sslmode=require", "postgresql://routee:***@db:5432/routee?sslmode=require"),
            ("postgresql://routee@db/routee?password=s3cret", "postgresql://routee@db/routee?password=***"),
            ("postgresql://routee@db/r?sslmode=verify-full&sslpassword=s3cret", "postgresql://routee@db/r?sslmode=verify-full&sslpassword=***"),
            ("postgres://db/r?Password=s3cret&application_name=x", "postgres://db/r?Password=***&application_name=x"),
            ("postgresql://u:s3cr@et@db/r?password=s3cret&password=s3cret", "postgresql://u:***@db/r?password=***&password=***"),
            ("./routee-callbacks.db", "./routee-callbacks.db"),
        ],
    )  # fmt: skip
    def test_every_form_of_secret_is_masked(self, uri: str, shown: str) -> None:
        """A password in the user information or in any secret query parameter is replaced by ``***``."""
        assert redact(uri) == shown
        assert "s3cr" not in redact(uri)

    def test_a_parse_error_shows_no_query_secret(self) -> None:
        """The --database parse error masks a password given as a query parameter too."""
        with pytest.raises(ConfigError) as caught:
            load_settings({"database": "postgresql://routee@db:port/routee?password=s3cret"}, {})
        assert "s3cret" not in str(caught.value)
        assert "password=***" in str(caught.value)


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
