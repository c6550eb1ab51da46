"""The ``routee-callbacks`` command: ``serve``, and the client and operator subcommands."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Sequence
from importlib.metadata import version
from typing import NoReturn

from service.config.settings import OPTIONS, Settings, load_settings
from service.domain.errors import ConfigError, StartupError

PROG = "routee-callbacks"
DEFAULT_GRPC_TARGET = "127.0.0.1:50051"

_LOGGER = logging.getLogger("service.cli")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2, with no usage dump."""

    def error(self, message: str) -> NoReturn:
        _die(2, message)


def _die(status: int, message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of every subcommand; each serve option also reads ROUTEE_CALLBACKS_<OPTION>."""
    parser = _Parser(prog=PROG, description="Receive Routee's Viber status callbacks and serve them over gRPC.")
    parser.add_argument("--version", action="version", version=f"{PROG} {version(PROG)}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="run the service in the foreground",
        description="Run the whole service in the foreground: the HTTP ingress under gunicorn, "
        "the gRPC server and the broker in its one worker. Every option can also be set with the "
        "environment variable named after it; the flag wins. Repeatable options take a comma-separated "
        "list in their variable.",
    )
    add_options(serve)
    from service.cli import client, forget, quarantine, reconcile, simulate

    client.add_commands(commands, DEFAULT_GRPC_TARGET)
    simulate.add_command(commands)
    quarantine.add_commands(commands, _Parser)
    forget.add_command(commands, add_options)
    reconcile.add_command(commands, add_options)
    return parser


def add_options(parser: argparse.ArgumentParser, flags: set[str] | None = None) -> None:
    """Add the serve options (those of ``flags`` only, when given); each also reads ROUTEE_CALLBACKS_<OPTION>."""
    defaults = Settings()
    for option in OPTIONS:
        if flags is not None and option.flag not in flags:
            continue
        default = getattr(defaults, option.field)
        shown = ", ".join(map(str, default)) if isinstance(default, tuple) else default
        if option.field == "routee_application_secret":
            shown = ""
        parser.add_argument(
            option.flag,
            dest=option.field,
            metavar=option.metavar,
            action="append" if option.repeatable else "store",
            help=f"{option.help} (env {option.env}; default: {shown if shown not in ('', None) else 'none'})",
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line."""
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        raise SystemExit(args.run(args))
    try:
        settings = load_settings(vars(args), os.environ)
    except ConfigError as ex:
        _die(2, str(ex))
    try:
        serve(settings)
    except StartupError as ex:
        _die(1, str(ex))


def serve(settings: Settings) -> None:
    """Check what can fail early, then hand over to gunicorn until it stops."""
    from service.runtime.process import (
        Roles,
        ServiceApplication,
        lock_grpc_port,
        prepare_instance,
        raise_open_files_limit,
        remove_instance,
    )

    instance = prepare_instance()  # First: it decides how every process records metrics.
    try:
        from service.config.tls import grpc_certificates, http_certificates
        from service.monitoring.logs import configure_logging
        from service.runtime.wiring import build_worker, run_writer
        from service.store import open_store

        configure_logging(settings.log_level, settings.log_format)
        # Fail in the foreground with one clear line rather than in a child after the fork; create or upgrade
        # the schema once, before any worker starts.
        store = open_store(settings.database, synchronous=settings.sqlite_synchronous)
        store.open()
        asyncio.run(store.close())
        http_certificates(settings)  # Unreadable or unusable TLS files: one line now, not a worker crash later.
        if grpc_certificates(settings) is None and not _is_loopback(settings.grpc_bind.host):
            _LOGGER.warning(
                "gRPC serves phone numbers and message texts in plain text beyond this machine: give it"
                " --grpc-tls-cert and --grpc-tls-key, or bind it to loopback behind a proxy that terminates TLS",
                extra={"grpc_bind": str(settings.grpc_bind)},
            )
        port_lock = lock_grpc_port(settings.grpc_bind)
        _check_port("HTTP", settings.http_bind.host, settings.http_bind.port)
        _check_port("gRPC", settings.grpc_bind.host, settings.grpc_bind.port)
        before, after = raise_open_files_limit()
        _LOGGER.info("open files limit (soft) raised to the hard limit", extra={"soft_before": before, "soft": after})
        try:
            ServiceApplication(settings, instance, Roles(build_worker, run_writer)).run()
        finally:
            port_lock.close()
    finally:
        remove_instance(instance)


def _is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # A name (or "" for every interface): assume it reaches beyond.


def _check_port(kind: str, host: str, port: int) -> None:
    if port == 0:
        return
    try:
        family, kind_, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind_, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as ex:
        raise StartupError(f"cannot listen for {kind} on {host}:{port}: {ex.strerror or ex}") from None
