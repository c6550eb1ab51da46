"""Fixtures shared by every tier of tests."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from support.dns import Zone, dns_server
from support.network import free_port
from support.postgres import PostgresServer, postgres_server
from support.service_process import ServiceProcess

StartService = Callable[..., ServiceProcess]
ENGINES = ("sqlite", "postgres")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole run."""
    with postgres_server(free_port()) as server:
        yield server


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, for tests that stop it."""
    with postgres_server(free_port()) as server:
        yield server


@pytest.fixture
def pg_database(postgres: PostgresServer) -> str:
    """The URI of a new, empty PostgreSQL database."""
    return postgres.create_database()


@pytest.fixture(params=ENGINES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A ``--database`` value for each engine in turn: a new SQLite file, then a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "routee-callbacks.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[StartService]:
    """Start the real ``routee-callbacks serve`` on free ports; every process started is stopped at the end."""
    started: list[ServiceProcess] = []

    def start(
        *args: str,
        database: str | Path | None = None,
        http_host: str = "127.0.0.1",
        ready_path: str = "/readyz",
        wait: bool = True,
        env: dict[str, str] | None = None,
        wrapper: tuple[str, ...] = (),
        http_context: ssl.SSLContext | None = None,
        grpc_credentials: grpc.ChannelCredentials | None = None,
    ) -> ServiceProcess:
        http_port, grpc_port = free_port(http_host), free_port()
        host = f"[{http_host}]" if ":" in http_host else http_host
        arguments = [
            "--http-bind",
            f"{host}:{http_port}",
            "--grpc-bind",
            f"127.0.0.1:{grpc_port}",
            "--database",
            str(database or tmp_path / "routee-callbacks.db"),
            "--log-format",
            "json",
            *args,
        ]
        base_env = {key: value for key, value in os.environ.items() if not key.startswith("ROUTEE_CALLBACKS_")}
        service = ServiceProcess(
            arguments,
            http_host=http_host,
            http_port=http_port,
            grpc_port=grpc_port,
            log_path=tmp_path / f"service-{len(started)}.log",
            env={**base_env, **(env or {})},
            wrapper=wrapper,
            http_context=http_context,
            grpc_credentials=grpc_credentials,
        )
        started.append(service)
        if wait:
            service.wait_ready(path=ready_path)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def dns_zone() -> Iterator[tuple[Zone, int]]:
    """A real DNS server on 127.0.0.1 serving a zone the test can change; yields (zone, port)."""
    zone = Zone(a=["127.0.0.2", "127.0.0.3"], aaaa=["::1"])
    with dns_server(zone) as port:
        yield zone, port
