"""Settings of the service: every option, its variable, its parser and its default."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.config.values import (
    HostPort,
    IPNetwork,
    choice,
    parse_cidr,
    parse_database,
    parse_dns_server,
    parse_host_port,
    parse_url,
    positive,
)
from service.domain.errors import ConfigError
from service.domain.rules import FULL, PERSONAL_DATA_MODES

ENV_PREFIX = "ROUTEE_CALLBACKS_"
# Duplicates must be recognised for 48 hours, and pruning forgets them.
MIN_RETENTION_HOURS = 48.0


@dataclass(frozen=True)
class Credentials:
    """A Routee application's id and secret (the secret stays out of ``repr``)."""

    application_id: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Settings:
    """Everything the service is configured with; built once by the entry point."""

    http_bind: HostPort = HostPort("0.0.0.0", 8080)
    grpc_bind: HostPort = HostPort("0.0.0.0", 50051)
    database: str = "routee-callbacks.db"
    allowlist_host: str = "callbacksallow.routee.net"
    dns_server: HostPort | None = None
    allow_cidrs: tuple[IPNetwork, ...] = ()
    trusted_proxies: tuple[IPNetwork, ...] = ()
    monitor_cidrs: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    dns_min_ttl: float = 5.0
    dns_max_ttl: float = 300.0
    dns_max_stale: float = 24 * 3600.0
    sqlite_synchronous: str = "FULL"
    store_personal_data: str = FULL
    retention_hours: float = 7 * 24.0
    reply_retention_hours: float | None = None
    campaign_retention_days: float = 90.0
    quarantine_max_mb: float = 64.0
    quarantine_days: float = 14.0
    max_streams: int = 20_000
    max_streams_per_client: int = 5_000
    subscriber_queue_size: int = 1024
    progress_interval: float = 15.0
    shutdown_grace: float = 10.0
    body_timeout: float = 10.0
    header_timeout: float = 10.0
    workers: int = 1
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None
    grpc_client_ca: Path | None = None
    routee_application_id: str = ""
    routee_application_secret: str = field(default="", repr=False)
    routee_api_url: str = "https://connect.routee.net"
    routee_auth_url: str = "https://auth.routee.net"
    reconcile_after: float = 3600.0
    reconcile_rate: float = 5.0
    log_level: str = "INFO"
    log_format: str = "auto"

    def routee_credentials(self) -> Credentials | None:
        """The Routee application's credentials, when both are configured (reconciliation runs only then)."""
        if not (self.routee_application_id and self.routee_application_secret):
            return None
        return Credentials(self.routee_application_id, self.routee_application_secret)


@dataclass(frozen=True)
class Option:
    """One option of ``routee-callbacks serve``: flag, settings field, parser, help."""

    flag: str
    field: str
    parse: Callable[[str], Any]
    help: str
    metavar: str
    repeatable: bool = False

    @property
    def env(self) -> str:
        """The environment variable that sets this option."""
        return ENV_PREFIX + self.flag.lstrip("-").upper().replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("--http-bind", "http_bind", parse_host_port, "address the HTTP ingress listens on", "HOST:PORT"),
    Option("--grpc-bind", "grpc_bind", parse_host_port, "address the gRPC server listens on", "HOST:PORT"),
    Option(
        "--database",
        "database",
        parse_database,
        "SQLite database file (created if missing), or a PostgreSQL URI postgresql://USER@HOST:PORT/DBNAME"
        " (the password preferably from PGPASSWORD or a passfile)",
        "PATH|URI",
    ),
    Option(
        "--allowlist-host",
        "allowlist_host",
        str,
        "DNS name whose A and AAAA records are the allowed callback senders; empty switches the DNS allowlist off",
        "NAME",
    ),
    Option(
        "--dns-server",
        "dns_server",
        parse_dns_server,
        "DNS server to resolve the allowlist with (default: the system resolver)",
        "IP[:PORT]",
    ),
    Option(
        "--allow-cidr",
        "allow_cidrs",
        parse_cidr,
        "network always allowed to post callbacks (repeatable)",
        "CIDR",
        repeatable=True,
    ),
    Option(
        "--trusted-proxy",
        "trusted_proxies",
        parse_cidr,
        "network of proxies whose X-Forwarded-For is believed (repeatable)",
        "CIDR",
        repeatable=True,
    ),
    Option(
        "--monitor-cidr",
        "monitor_cidrs",
        parse_cidr,
        "network allowed to connect for probes, /metrics and /openapi.json but not to post callbacks (repeatable);"
        " any other stranger is turned away before its request is read",
        "CIDR",
        repeatable=True,
    ),
    Option(
        "--dns-min-ttl",
        "dns_min_ttl",
        positive(float),
        "shortest time an allowlist answer is used before it is refreshed, in seconds",
        "SECONDS",
    ),
    Option(
        "--dns-max-ttl",
        "dns_max_ttl",
        positive(float),
        "longest time an allowlist answer is used before it is refreshed, in seconds",
        "SECONDS",
    ),
    Option(
        "--dns-max-stale",
        "dns_max_stale",
        positive(float),
        "how long the last good allowlist is kept while DNS fails, in seconds; callbacks get 503 after that",
        "SECONDS",
    ),
    Option(
        "--sqlite-synchronous",
        "sqlite_synchronous",
        choice("FULL", "NORMAL"),
        "SQLite synchronous mode: FULL survives power loss, NORMAL only a process crash",
        "MODE",
    ),
    Option(
        "--retention-hours",
        "retention_hours",
        positive(float, most=100 * 365 * 24),
        "how long status events are kept (at least 48, the duplicate window); older ones are deleted, and a"
        " message (its current status) with its last event",
        "HOURS",
    ),
    Option(
        "--reply-retention-hours",
        "reply_retention_hours",
        positive(float, most=100 * 365 * 24),
        "how long replies are kept (at least 48; default: as --retention-hours)",
        "HOURS",
    ),
    Option(
        "--campaign-retention-days",
        "campaign_retention_days",
        positive(float, most=100 * 365),
        "how long a campaign's summary (GetCampaignSummary) is kept once its last message is gone, counted from"
        " its latest update, in days",
        "DAYS",
    ),
    Option(
        "--quarantine-max-mb",
        "quarantine_max_mb",
        positive(float),
        "most the quarantine of refused bodies holds, in MiB; the entries seen longest ago go first",
        "MIB",
    ),
    Option(
        "--quarantine-days",
        "quarantine_days",
        positive(float, most=100 * 365),
        "how long a refused body stays in quarantine after it was last received, in days",
        "DAYS",
    ),
    Option("--max-streams", "max_streams", positive(int), "most concurrent StreamStatusUpdates streams", "N"),
    Option(
        "--max-streams-per-client",
        "max_streams_per_client",
        positive(int),
        "most concurrent streams of one client (its TLS client certificate's name, else its address; behind a TCP"
        " load balancer every client has the balancer's address)",
        "N",
    ),
    Option(
        "--subscriber-queue-size",
        "subscriber_queue_size",
        positive(int),
        "updates buffered per stream before it catches up from the store",
        "N",
    ),
    Option(
        "--progress-interval",
        "progress_interval",
        positive(float),
        "idle time after which a stream gets a progress item, in seconds",
        "SECONDS",
    ),
    Option(
        "--shutdown-grace",
        "shutdown_grace",
        positive(float),
        "time open calls get to finish on shutdown, in seconds",
        "SECONDS",
    ),
    Option(
        "--body-timeout",
        "body_timeout",
        positive(float),
        "time a callback body may take to arrive, in seconds; a slower one gets 408 and its connection is closed",
        "SECONDS",
    ),
    Option(
        "--workers",
        "workers",
        positive(int),
        "worker processes serving HTTP and gRPC (every stream on any worker sees every event)",
        "N",
    ),
    Option(
        "--http-tls-cert",
        "http_tls_cert",
        Path,
        "certificate chain (PEM) to serve HTTPS with; plain HTTP is then refused; re-read when renewed on disk",
        "FILE",
    ),
    Option("--http-tls-key", "http_tls_key", Path, "private key (PEM) of --http-tls-cert", "FILE"),
    Option(
        "--grpc-tls-cert",
        "grpc_tls_cert",
        Path,
        "certificate chain (PEM) to serve gRPC over TLS with; re-read when renewed on disk",
        "FILE",
    ),
    Option("--grpc-tls-key", "grpc_tls_key", Path, "private key (PEM) of --grpc-tls-cert", "FILE"),
    Option(
        "--grpc-client-ca",
        "grpc_client_ca",
        Path,
        "CA certificate (PEM): gRPC clients must present a certificate it signed (mutual TLS)",
        "FILE",
    ),
    Option(
        "--routee-application-id",
        "routee_application_id",
        str,
        "Routee application id: with its secret, statuses no callback brought are asked of Routee's tracking API",
        "ID",
    ),
    Option(
        "--routee-application-secret",
        "routee_application_secret",
        str,
        "the application's secret; prefer the environment variable (a flag shows in the process list); never logged",
        "SECRET",
    ),
    Option("--routee-api-url", "routee_api_url", parse_url, "Routee's API (tracking)", "URL"),
    Option("--routee-auth-url", "routee_auth_url", parse_url, "Routee's OAuth server (tokens)", "URL"),
    Option(
        "--reconcile-after",
        "reconcile_after",
        positive(float),
        "seconds a status that is not final may stay unchanged before Routee's tracking API is asked",
        "SECONDS",
    ),
    Option(
        "--reconcile-rate",
        "reconcile_rate",
        positive(float),
        "most tracking API calls a second (reconciliation and backfill)",
        "N",
    ),
    Option(
        "--header-timeout",
        "header_timeout",
        positive(float),
        "time a request's headers may take to arrive, in seconds; a slower one gets 408 and its connection is closed",
        "SECONDS",
    ),
    Option(
        "--store-personal-data",
        "store_personal_data",
        choice(*PERSONAL_DATA_MODES),
        "what of the phone numbers and texts in callbacks is stored: full; masked (a number's country code and"
        " last three digits, no texts); none (no number, no text); docs/privacy.md",
        "MODE",
    ),
    Option("--log-level", "log_level", choice("DEBUG", "INFO", "WARNING", "ERROR"), "log level", "LEVEL"),
    Option(
        "--log-format",
        "log_format",
        choice("auto", "json", "text"),
        "log format; auto is JSON unless stderr is a terminal",
        "FORMAT",
    ),
)


def load_settings(flags: Mapping[str, str | Sequence[str] | None], environ: Mapping[str, str] = os.environ) -> Settings:
    """Build settings from parsed flags (by field name) and environment variables; flags win.

    Raises ConfigError naming the option whose value is bad.
    """
    values: dict[str, Any] = {}
    for option in OPTIONS:
        given = flags.get(option.field)
        if given is None and option.env in environ:
            raw = environ[option.env]
            given = [part for part in raw.split(",") if part.strip()] if option.repeatable else raw
        if given is None:
            continue
        try:
            if option.repeatable:
                values[option.field] = tuple(option.parse(item) for item in given)
            else:
                assert isinstance(given, str)
                values[option.field] = option.parse(given)
        except ValueError as ex:
            raise ConfigError(option.flag, str(ex)) from None
    settings = Settings(**values)
    _check_combination(settings)
    return settings


def _check_combination(settings: Settings) -> None:
    if settings.dns_min_ttl > settings.dns_max_ttl:
        raise ConfigError("--dns-min-ttl", f"must not exceed --dns-max-ttl ({settings.dns_max_ttl:g})")
    if settings.retention_hours < MIN_RETENTION_HOURS:
        raise ConfigError("--retention-hours", f"must be at least {MIN_RETENTION_HOURS:g} (Routee retries for ~40 h)")
    if settings.reply_retention_hours is not None and settings.reply_retention_hours < MIN_RETENTION_HOURS:
        raise ConfigError(
            "--reply-retention-hours", f"must be at least {MIN_RETENTION_HOURS:g} (Routee retries for ~40 h)"
        )
    if settings.http_bind.port and settings.http_bind == settings.grpc_bind:
        raise ConfigError("--grpc-bind", f"must differ from --http-bind ({settings.http_bind})")
    for port in ("http", "grpc"):
        if (getattr(settings, f"{port}_tls_cert") is None) != (getattr(settings, f"{port}_tls_key") is None):
            raise ConfigError(f"--{port}-tls-cert", f"--{port}-tls-cert and --{port}-tls-key go together")
    if settings.grpc_client_ca is not None and settings.grpc_tls_cert is None:
        raise ConfigError("--grpc-client-ca", "client certificates need TLS: give --grpc-tls-cert and --grpc-tls-key")
    if bool(settings.routee_application_id) != bool(settings.routee_application_secret):
        raise ConfigError(
            "--routee-application-id", "--routee-application-id and --routee-application-secret go together"
        )
    if settings.workers > 1 and settings.grpc_bind.port == 0:
        raise ConfigError("--grpc-bind", "a fixed port is needed with more than one worker (they share it)")
