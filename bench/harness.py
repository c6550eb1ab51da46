"""What every benchmark uses: starting servers, driving wrk, posting at a steady rate, summarising rounds."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CALLBACKS_PATH = "/v1/callbacks/viber"
SMS_PATH = "/v1/callbacks/sms"
WRK = shutil.which("wrk") or "wrk"
FIXTURE = (ROOT / "tests" / "fixtures" / "viber" / "02-m1-delivered.json").read_bytes()
_RUN_IDS = itertools.count(1)
#: A spread of the baseline over rounds above this marks a run as noisy (the machine is shared).
NOISY_SPREAD = 0.15


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_http(port: int, path: str = "/healthz", deadline: float = 30) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        with contextlib.suppress(OSError, http.client.HTTPException), contextlib.closing(connection):
            connection.request("GET", path)
            if connection.getresponse().status in (200, 405):
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


@contextlib.contextmanager
def process(command: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(command, text=True, start_new_session=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class Service:
    """A running ``routee-callbacks serve``."""

    def __init__(self, proc: subprocess.Popen[str], http_port: int, grpc_port: int) -> None:
        self.proc, self.http_port, self.grpc_port = proc, http_port, grpc_port

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def counts(self) -> dict[str, float]:
        """Callbacks by outcome so far, from the service's own metrics."""
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        with contextlib.closing(connection):
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        counts = {"accepted": 0.0, "duplicate": 0.0, "rejected": 0.0, "unavailable": 0.0}
        for outcome, value in re.findall(
            r'^routee_callbacks_callbacks_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)', text, re.M
        ):
            counts[outcome] += float(value)
        return counts

    def rss_mb(self) -> float:
        """Resident memory of the first worker (the master's child that is not the writer process), in MiB."""
        for pid in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
            if Path(f"/proc/{pid}/comm").read_text().strip() != "routee-writer":
                match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
                return int(match.group(1)) / 1024 if match else float("nan")
        return float("nan")


@contextlib.contextmanager
def service(workdir: Path, *extra: str, database: str | None = None, tree: Path | None = None) -> Iterator[Service]:
    """A running service: the installed one, or that of a source ``tree`` (its own code on the same interpreter
    and dependencies, as the A/B mode compares two trees)."""
    http_port, grpc_port = free_port(), free_port()
    program = [str(BIN / "routee-callbacks")]
    environment = None
    if tree is not None:  # The tree's own console script, as its pyproject.toml names it.
        module, _, function = tomllib.loads((tree / "pyproject.toml").read_text())["project"]["scripts"][
            "routee-callbacks"
        ].partition(":")
        program = [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]
        environment = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'protos'}"}
    command = [
        *program, "serve",
        "--http-bind", f"127.0.0.1:{http_port}", "--grpc-bind", f"127.0.0.1:{grpc_port}",
        "--database", database or str(workdir / f"bench-{http_port}.db"),
        "--allowlist-host", "", "--allow-cidr", "127.0.0.0/8",
        "--log-level", "WARNING", "--max-streams", "20000", "--max-streams-per-client", "20000", *extra,
    ]  # fmt: skip
    with process(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment, cwd=tree or workdir
    ) as proc:
        wait_http(http_port)
        time.sleep(0.3)
        yield Service(proc, http_port, grpc_port)


@contextlib.contextmanager
def gunicorn(app: str, *options: str) -> Iterator[tuple[int, int]]:
    """A baseline app on gunicorn; yields its port and its master's pid (its process tree is the server)."""
    port = free_port()
    command = [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", "--chdir", str(ROOT), *options, app]
    with process(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        wait_http(port, CALLBACKS_PATH)
        yield port, proc.pid


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and every living descendant, in seconds (from /proc/PID/stat): what a server
    spent, whatever else the shared machine does meanwhile."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total


#: Workers add what they counted to the shared metrics once a second.
COUNTS_FLUSHED = 1.5


def wrk(
    port: int, seconds: float, connections: int = 32, *, cpu: dict[str, int] | None = None, sms: bool = False
) -> dict[str, float]:
    """One wrk run of distinct callbacks (``sms``: SMS delivery reports, three parts a message, to the SMS
    endpoint): requests/s, p50/p99 in ms, errors, answers (2xx); with ``cpu`` (a name for each process tree to
    measure, by its root pid), each tree's CPU seconds over the run, as ``cpu_s_NAME``."""
    run_id = f"{os.getpid()}-{next(_RUN_IDS)}-{time.time_ns()}"
    before = {name: tree_cpu_seconds(pid) for name, pid in (cpu or {}).items()}
    output = subprocess.run(
        [WRK, "-t2", f"-c{connections}", f"-d{int(seconds)}s",
         "-s", str(ROOT / "bench" / ("sms_reports.lua" if sms else "callbacks.lua")),
         f"http://127.0.0.1:{port}{SMS_PATH if sms else CALLBACKS_PATH}", "--", run_id],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    spent = {f"cpu_s_{name}": tree_cpu_seconds(pid) - before[name] for name, pid in (cpu or {}).items()}
    result = json.loads(output.split("RESULT ", 1)[1].splitlines()[0])
    return {
        "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "errors": result["errors"],
        "requests": result["requests"],
        "answers": result["requests"] - result["errors"],
        **spent,
    }


def wrk_service(
    target: Service, seconds: float, connections: int = 32, *, database_pid: int | None = None, sms: bool = False
) -> dict[str, float]:
    """wrk against the service, with what the service itself counted (accepted must equal requests) and the CPU
    its processes spent (``cpu_s_server``; with ``database_pid``, the database server's apart: ``cpu_s_database``)."""
    before = target.counts()
    trees = {"server": target.proc.pid, **({"database": database_pid} if database_pid else {})}
    result = wrk(target.http_port, seconds, connections, cpu=trees, sms=sms)
    time.sleep(COUNTS_FLUSHED)  # Every worker's last counts reach the metrics the one scraped shows.
    after = target.counts()
    return {**result, **{outcome: after[outcome] - before[outcome] for outcome in after}}


def wrk_together(
    targets: list[Service], seconds: float, connections: int = 32, *, database_pid: int | None = None
) -> dict[str, float]:
    """wrk against several instances at once, the connections shared out; the sum, and the worst p99."""
    results: list[dict[str, float]] = []
    threads = [
        threading.Thread(
            target=lambda t=t: results.append(
                wrk_service(t, seconds, connections // len(targets), database_pid=database_pid)
            )
        )
        for t in targets
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each run measured its own instance; the database server is one, measured by each run at once: keep one.
    summed = {
        key: sum(result[key] for result in results)
        for key in results[0]
        if key not in ("p50_ms", "p99_ms", "cpu_s_database")
    }
    if "cpu_s_database" in results[0]:
        summed["cpu_s_database"] = max(result["cpu_s_database"] for result in results)
    return {**summed, "p50_ms": max(r["p50_ms"] for r in results), "p99_ms": max(r["p99_ms"] for r in results)}


def spread(values: list[float]) -> dict[str, float]:
    """min, median and max of a measure over rounds."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def noisy(values: list[float]) -> bool:
    """Whether a baseline moved more than NOISY_SPREAD between rounds of one run."""
    return max(values) / min(values) - 1 > NOISY_SPREAD


class Poster:
    """Posts distinct callbacks at a steady total rate from a few threads (each waits for its answer, which takes
    a group commit); counts what was sent and what was not answered 200."""

    SENDERS = 8

    def __init__(self, port: int, rate: float, seconds: float, campaigns: int = 0) -> None:
        self.port, self.rate, self.seconds, self.campaigns = port, rate, seconds, campaigns
        self._sent = [0] * self.SENDERS
        self._failed = [0] * self.SENDERS
        self.threads = [threading.Thread(target=self._run, args=(index,), daemon=True) for index in range(self.SENDERS)]

    @property
    def sent(self) -> int:
        return sum(self._sent)

    @property
    def failed(self) -> int:
        return sum(self._failed)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the senders to finish; return whether any is still running."""
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout)
                break
        return any(thread.is_alive() for thread in self.threads)

    def _run(self, index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        template = json.loads(FIXTURE)
        rate = self.rate / self.SENDERS
        start = time.monotonic() + index / self.rate  # Staggered, so the senders do not post in step.
        while time.monotonic() - start < self.seconds:
            due = start + self._sent[index] / rate
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            template["trackingId"] = f"soak-{self.port}-{index}-{self._sent[index]}-{time.time_ns()}"
            if self.campaigns:
                template["campaignTrackingId"] = (
                    f"campaign-{(self._sent[index] * self.SENDERS + index) % self.campaigns}"
                )
            try:
                connection.request("POST", CALLBACKS_PATH, json.dumps(template), {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                self._failed[index] += response.status != 200
            except (OSError, http.client.HTTPException):
                self._failed[index] += 1
                connection.close()
            self._sent[index] += 1
        connection.close()

    def __enter__(self) -> Poster:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self.threads:
            thread.join()


def clients(mode: str, target: str, count: int, seconds: float, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_clients", mode, target, str(count), str(seconds), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip


def subscribers_against(target: str, count: int, seconds: float, post: tuple[int, float] | None) -> dict[str, float]:
    proc = clients("subscribe", target, count, seconds)
    assert proc.stderr is not None
    proc.stderr.readline()  # "subscribed"
    if post is not None:
        with Poster(post[0], post[1], seconds + 1):
            pass
    out, err = proc.communicate(timeout=seconds + 300)
    if proc.returncode != 0:
        raise RuntimeError(err)
    result: dict[str, float] = json.loads(out)
    return result
