"""The process model: gunicorn's master, N uvicorn workers (HTTP and gRPC), and the instance's writer process.

::

    master (gunicorn arbiter; supervises the others, holds the gRPC port lock)
    ├── writer process   the one writer of this instance: validates, group-commits, feeds the log to workers
    ├── worker 1         Falcon ASGI + grpc.aio + broker on one event loop; reads the store directly
    └── worker N         (the kernel spreads HTTP and gRPC connections over the workers)

The master starts the writer before the first worker and restarts it if it
dies (workers answer 503 meanwhile and reconnect by themselves); on shutdown it
stops the workers first, then the writer, so in-flight callbacks are kept. The
writer ignores SIGTERM and SIGINT, which a supervisor often sends to the whole
process group at once: it stops on ``WRITER_STOP_SIGNAL`` from the master, or
when the master is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import math
import os
import resource
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, NamedTuple, Protocol

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from uvicorn_worker import UvicornWorker

from service.config.settings import Settings
from service.config.values import HostPort
from service.domain.errors import StartupError
from service.monitoring.logs import logging_config

_LOGGER = logging.getLogger("service.process")

#: What the master sends the writer process once the workers have stopped.
WRITER_STOP_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True)
class Instance:
    """What every process of one running instance shares besides its settings."""

    #: The private directory (mode 0700) holding the writer's socket and the metrics files.
    runtime_dir: Path
    master_pid: int

    @property
    def writer_socket(self) -> Path:
        """Where the writer process listens for its workers."""
        return self.runtime_dir / "writer.sock"

    @property
    def metrics_dir(self) -> Path:
        """Where every process of the instance records its metrics."""
        return self.runtime_dir / "metrics"

    @property
    def reconcile_state(self) -> Path:
        """Where the writer process says what reconciliation is doing (for every worker's /readyz)."""
        return self.runtime_dir / "reconcile.json"

    @property
    def boot_failure(self) -> Path:
        """Where a worker that cannot start says why, for the master's one line as it stops the instance."""
        return self.runtime_dir / "boot-failure"

    def record_boot_failure(self, error: BaseException) -> None:
        """Say why this worker cannot start (the master reads it when the worker's exit stops the instance)."""
        cause = str(error) if isinstance(error, StartupError) else f"{type(error).__name__}: {error}"
        with contextlib.suppress(OSError):
            self.boot_failure.write_text(cause)


def prepare_instance() -> Instance:
    """Create the instance's private directory and switch prometheus-client to multiprocess mode.

    Must run before any metric is created (every process forked later inherits the choice).
    """
    runtime_dir = Path(tempfile.mkdtemp(prefix="instance-", dir=user_directory()))
    instance = Instance(runtime_dir, os.getpid())
    instance.metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(instance.metrics_dir)
    # prometheus-client reads the variable once, when it is first imported, and a command module may have
    # imported it already: choose its storage again, now, rather than depend on the order of imports.
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return instance


def name_process(name: str) -> None:
    """Give this process a name ``ps``, ``top`` and ``/proc/PID/comm`` show (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # 15: PR_SET_NAME


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit (every process inherits it); return (before, after).

    Each HTTP connection, gRPC connection and database file takes a descriptor: the common default of 1 024 is
    too few for a service that strangers can knock at.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def user_directory() -> Path:
    """This user's private directory for routee-callbacks: the instances' runtime directories and the gRPC port
    locks. Under ``$XDG_RUNTIME_DIR``, else the temporary directory; created with mode 0700, and refused
    (StartupError) when it is not a directory of this user's that nobody else may enter: another local user must
    not be able to hold a lock or plant a file there."""
    path = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"routee-callbacks-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError as ex:
        raise StartupError(f"cannot use the runtime directory {path}: {ex.strerror or ex}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise StartupError(
            f"cannot use the runtime directory {path}: it must be this user's directory with mode 0700"
            f" (it is owned by uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})"
        )
    return path


def lock_grpc_port(bind: HostPort) -> IO[bytes]:
    """Hold a lock named after the gRPC address for as long as the process lives.

    The workers bind the port with SO_REUSEPORT to share it, and so could a second instance of the same user (the
    kernel lets only the same user share a port); this lock, in that user's private directory, is what keeps a
    second instance off. Raises StartupError when another instance holds it, or it cannot be taken.
    """
    path = user_directory() / f"grpc-{bind.host}-{bind.port}.lock"
    try:
        handle = path.open("ab")
    except OSError as ex:
        raise StartupError(f"cannot lock the gRPC port {bind} with {path}: {ex.strerror or ex}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StartupError(f"cannot listen for gRPC on {bind}: another routee-callbacks instance serves it") from None
    return handle


class Worker(UvicornWorker):  # type: ignore[misc]
    """uvicorn's gunicorn worker on uvloop, its HTTP connections built by the composition root.

    The allowlist decides itself which X-Forwarded-For to believe (``--trusted-proxy``);
    uvicorn must not rewrite the client address before it.
    """

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "proxy_headers": False,
        "server_header": False,
    }

    def load_wsgi(self) -> None:
        """Build the app (``ServiceApplication.load``); a failure is recorded before gunicorn's exit status 3."""
        try:
            super().load_wsgi()
        except Exception as ex:
            self.app.instance.record_boot_failure(ex)
            raise

    async def _serve(self) -> None:
        # `load` has run (gunicorn loads the app before it runs the worker): serve with its connection class.
        self.config.http = self.app.connection_class
        await super()._serve()


class ServiceArbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's arbiter, also supervising the instance's writer process."""

    WRITER_RESTART_DELAY = 1.0

    def __init__(self, app: ServiceApplication) -> None:
        super().__init__(app)
        self._service = app
        self._writer_pid = 0
        self._writer_started = 0.0
        self._stopping = False
        #: Why the instance stopped with an error, in one line (set by ``halt``).
        self.failure: str | None = None

    def spawn_worker(self) -> int:
        """Fork a worker. The worker leaves by ``os._exit`` with gunicorn's status: its exit must not unwind
        through the master's stack (``serve`` would remove the instance's shared files on the way out)."""
        master = os.getpid()
        try:
            pid: int = super().spawn_worker()
        except SystemExit as ex:
            if os.getpid() == master:
                raise
            logging.shutdown()
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(ex.code if isinstance(ex.code, int) else int(ex.code is not None))
        return pid

    def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
        """Stop the instance; a worker that could not start is named with its cause (gunicorn says only
        "Worker failed to boot.")."""
        if exit_status == self.WORKER_BOOT_ERROR:
            with contextlib.suppress(OSError):
                reason = f"a worker failed to start: {self._service.instance.boot_failure.read_text().strip()}"
        if exit_status:
            self.failure = reason or f"the service stopped with status {exit_status}"
        super().halt(reason, exit_status)

    def manage_workers(self) -> None:
        """Keep the writer process running, then the workers (the writer first: workers connect to it)."""
        if (
            not self._writer_pid
            and not self._stopping
            and time.monotonic() - self._writer_started >= self.WRITER_RESTART_DELAY
        ):
            self._spawn_writer()
        super().manage_workers()

    def reap_workers(self) -> None:
        """Notice the writer's exit first (gunicorn's own reaping would claim it as an unknown child)."""
        if self._writer_pid:
            try:
                pid, status = os.waitpid(self._writer_pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self._writer_pid, 0
            if pid:
                if not self._stopping:
                    self.log.error("writer process (pid:%s) exited with status %s; restarting it", pid, status)
                self._forget(pid)
                self._writer_pid = 0
        super().reap_workers()

    def stop(self, graceful: bool = True) -> None:
        """Stop the workers, then the writer (in-flight callbacks still need it)."""
        self._stopping = True
        super().stop(graceful)
        if self._writer_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._writer_pid, WRITER_STOP_SIGNAL)
            deadline = time.monotonic() + self.cfg.graceful_timeout
            while time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(self._writer_pid, os.WNOHANG)[0]:
                        break
                    time.sleep(0.05)
                    continue
                break
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._writer_pid, signal.SIGKILL)
            self._writer_pid = 0

    def _spawn_writer(self) -> None:
        self._writer_started = time.monotonic()
        pid = os.fork()
        if pid:
            self._writer_pid = pid
            self.log.info("spawned the writer process (pid: %s)", pid)
            return
        status = 0
        try:
            for listener in self.LISTENERS:  # The writer serves no HTTP: the port must close with the workers.
                listener.close()
            for signum in self.SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for signum in (signal.SIGTERM, signal.SIGINT):  # The master decides when the writer stops.
                signal.signal(signum, signal.SIG_IGN)
            name_process("routee-writer")
            self._service.roles.run_writer(self._service.settings, self._service.instance)
        except BaseException:
            self.log.exception("the writer process failed")
            status = 1
        finally:
            os._exit(status)

    def _forget(self, pid: int) -> None:
        """Drop a dead process's live gauges from the instance's metrics."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self._service.instance.metrics_dir))  # type: ignore[no-untyped-call]


def graceful_timeout(settings: Settings) -> int:
    """How long the master waits for the workers to finish after SIGTERM, and then as long for the writer."""
    return math.ceil(settings.shutdown_grace) + 5


def stop_seconds(settings: Settings) -> int:
    """The longest a SIGTERM may take to stop the whole instance (a supervisor's grace period must exceed it)."""
    return 2 * graceful_timeout(settings)


class WorkerParts(Protocol):
    """What a worker serves: the ASGI app, and the protocol class its HTTP connections are held to."""

    @property
    def app(self) -> Any: ...

    @property
    def connection_class(self) -> type: ...


class Roles(NamedTuple):
    """What each process of an instance runs, as the composition root builds it: a worker's app (built in the
    worker, after the fork) and the writer process's loop."""

    build_worker: Callable[[Settings, Instance], WorkerParts]
    run_writer: Callable[[Settings, Instance], None]


class ServiceApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn configured from Settings only; its own config files and variables are ignored."""

    def __init__(self, settings: Settings, instance: Instance, roles: Roles) -> None:
        self.settings = settings
        self.instance = instance
        self.roles = roles
        self.connection_class: type | None = None
        super().__init__()

    def load_config(self) -> None:
        """Set gunicorn's configuration."""
        config = {
            "bind": [str(self.settings.http_bind)],
            "workers": self.settings.workers,
            "worker_class": f"{Worker.__module__}.{Worker.__qualname__}",
            "graceful_timeout": graceful_timeout(self.settings),
            "timeout": 30,
            "keepalive": 75,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": self.settings.log_level.lower(),
            "logconfig_dict": logging_config(self.settings.log_level, self.settings.log_format),
            "proc_name": "routee-callbacks",
            "preload_app": False,
            "reuse_port": False,
            "control_socket_disable": True,  # two instances on one host must not fight over it
            "child_exit": lambda arbiter, worker: arbiter._forget(worker.pid),
        }
        for key, value in config.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """Build the app in the worker, after the fork: database connections and gRPC must not cross a fork."""
        parts = self.roles.build_worker(self.settings, self.instance)
        self.connection_class = parts.connection_class
        return parts.app

    def run(self) -> None:
        """Run the master until it stops; raise StartupError, with the cause, when it stops with an error."""
        arbiter = ServiceArbiter(self)
        try:
            arbiter.run()
        except RuntimeError as ex:
            raise StartupError(str(ex)) from None
        except SystemExit as ex:
            if ex.code not in (0, None):
                raise StartupError(arbiter.failure or "the service stopped with an error; see the log above") from None


def remove_instance(instance: Instance) -> None:
    """Delete the instance's private directory."""
    for path in sorted(instance.runtime_dir.rglob("*"), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() else path.unlink()
    with contextlib.suppress(OSError):
        instance.runtime_dir.rmdir()
