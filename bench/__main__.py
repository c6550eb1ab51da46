"""``make bench``: measure routee-callbacks against bare baselines, side by side, on this machine.

python -m bench [--quick] [--soak-seconds S] [--out FILE]

1. ingress: distinct Viber callbacks from wrk (32 connections) against a do-nothing Falcon endpoint on
   gunicorn's default sync worker;
2. fan-out: publish-to-receive latency and deliveries/s with 1, 100, 1 000 and 10 000 subscribers,
   against a bare grpc.aio fan-out with the same clients;
3. GetMessageStatus QPS against a bare grpc.aio unary endpoint;
4. resident memory per idle subscriber and at 10 000 subscribers;
5. a soak at 500 callbacks/s with 100 subscribers, memory sampled throughout.

Ingress and fan-out (below 10 000 subscribers) run 3 rounds alternating baseline and ours; the table shows
medians, and each ratio is the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CALLBACKS_PATH = "/v1/callbacks/viber"
WRK = shutil.which("wrk") or "wrk"
FIXTURE = (ROOT / "tests" / "fixtures" / "viber" / "02-m1-delivered.json").read_bytes()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_http(port: int, path: str = "/healthz", deadline: float = 20) -> None:
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


@contextlib.contextmanager
def service(workdir: Path, *extra: str) -> Iterator[tuple[int, int, subprocess.Popen[str]]]:
    http_port, grpc_port = free_port(), free_port()
    database = workdir / f"bench-{http_port}.db"
    command = [
        str(BIN / "routee-callbacks"), "serve",
        "--http-bind", f"127.0.0.1:{http_port}", "--grpc-bind", f"127.0.0.1:{grpc_port}",
        "--database", str(database), "--allowlist-host", "", "--allow-cidr", "127.0.0.0/8",
        "--log-level", "WARNING", "--max-streams", "20000", *extra,
    ]  # fmt: skip
    with process(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        wait_http(http_port)
        time.sleep(0.3)
        yield http_port, grpc_port, proc


@contextlib.contextmanager
def bare_server(rate: float) -> Iterator[int]:
    """The bare grpc.aio baseline publishing ``rate`` updates a second (0: none); yields its port once ready."""
    port = free_port()
    command = [sys.executable, "-m", "bench.bare_grpc", str(port), str(rate)]
    with process(command, stdout=subprocess.PIPE, cwd=ROOT) as bare:
        assert bare.stdout is not None
        bare.stdout.readline()  # "ready"
        yield port


def worker_rss_mb(master_pid: int) -> float:
    """Resident memory of the gunicorn worker (the master's child) in MiB."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    pid = int(children[0]) if children else master_pid
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def wrk(port: int, seconds: float) -> dict[str, float]:
    output = subprocess.run(
        [WRK, "-t2", "-c32", f"-d{int(seconds)}s", "-s", str(ROOT / "bench" / "callbacks.lua"),
         f"http://127.0.0.1:{port}{CALLBACKS_PATH}"],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    result = json.loads(output.split("RESULT ", 1)[1].splitlines()[0])
    return {
        "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "errors": result["errors"],
        "requests": result["requests"],
    }


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
            template["trackingId"] = f"soak-{self.port}-{index}-{self._sent[index]}"
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


COUNTS = ("errors", "requests", "deliveries")


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each rate and latency as its median over rounds (the machine is shared; one round can be unlucky),
    each count as its total (one failed request in any round shows)."""
    return {
        key: sum(result[key] for result in rounds) if key in COUNTS else statistics.median(r[key] for r in rounds)
        for key in rounds[0]
    }


def bench_ingress(workdir: Path, seconds: float, rounds: int) -> dict[str, Any]:
    """Rounds alternate baseline and ours, both servers up, so both see the machine in the same state.

    A warm-up run first: on a new database the first round was much slower than the next ones (measured:
    5.7 k req/s, then 8.7 k and 9.3 k), most likely while its WAL and database files grow to their working size.
    """
    port = free_port()
    command = [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", "--chdir", str(ROOT), "bench.baseline_wsgi:app"]
    pairs = []
    with (
        process(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        service(workdir) as (http_port, _, _),
    ):
        wait_http(port, CALLBACKS_PATH)
        warm_up = {"baseline": wrk(port, min(seconds, 5)), "ours": wrk(http_port, min(seconds, 5))}
        for _ in range(rounds):
            pairs.append((wrk(port, seconds), wrk(http_port, seconds)))
    return {
        "baseline": medians([baseline for baseline, _ in pairs]),
        "ours": medians([ours for _, ours in pairs]),
        "ratio": statistics.median(ours["rps"] / baseline["rps"] for baseline, ours in pairs),
        "rounds": pairs,
        "warm_up": warm_up,
    }


def fanout_round(workdir: Path, count: int, rate: float, window: float) -> tuple[dict[str, float], dict[str, float]]:
    with service(workdir) as (http_port, grpc_port, _):
        ours = subscribers_against(f"127.0.0.1:{grpc_port}", count, window, (http_port, rate))
    with bare_server(rate) as bare_port:
        baseline = subscribers_against(f"127.0.0.1:{bare_port}", count, window, None)
    return baseline, ours


def bench_fanout(workdir: Path, counts: list[int], seconds: float, rounds: int) -> dict[str, Any]:
    rates = {1: 50.0, 100: 50.0, 1000: 5.0, 10000: 0.5}
    results: dict[str, Any] = {}
    for count in counts:
        rate = rates.get(count, 20.0)
        # 10 000 streams take a while to open and see few publishes a second: one longer round.
        pairs = (
            [fanout_round(workdir, count, rate, max(seconds, 20.0))]
            if count >= 10000
            else [fanout_round(workdir, count, rate, seconds) for _ in range(rounds)]
        )
        results[str(count)] = {
            "publishes_per_second": rate,
            "ours": medians([ours for _, ours in pairs]),
            "baseline": medians([baseline for baseline, _ in pairs]),
            "p99_ratio": statistics.median(ours["p99_ms"] / baseline["p99_ms"] for baseline, ours in pairs),
            "deliveries_ratio": statistics.median(
                ours["per_second"] / baseline["per_second"] if baseline["per_second"] else float("nan")
                for baseline, ours in pairs
            ),
            "rounds": pairs,
        }
    return results


def bench_unary(workdir: Path, seconds: float) -> dict[str, Any]:
    with service(workdir) as (http_port, grpc_port, _):
        connection = http.client.HTTPConnection("127.0.0.1", http_port)
        connection.request("POST", CALLBACKS_PATH, FIXTURE, {"Content-Type": "application/json"})
        connection.getresponse().read()
        tracking_id = json.loads(FIXTURE)["trackingId"]
        proc = clients("unary", f"127.0.0.1:{grpc_port}", 32, seconds, tracking_id)
        ours = json.loads(proc.communicate(timeout=seconds + 60)[0])
    with bare_server(0) as bare_port:
        proc = clients("unary", f"127.0.0.1:{bare_port}", 32, seconds, "bench")
        baseline = json.loads(proc.communicate(timeout=seconds + 60)[0])
    return {"ours": ours, "baseline": baseline, "ratio": ours["qps"] / baseline["qps"]}


def bench_memory(workdir: Path, counts: list[int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for count in counts:
        with service(workdir) as (_, grpc_port, proc):
            before = worker_rss_mb(proc.pid)
            holder = clients("idle", f"127.0.0.1:{grpc_port}", count, 600)
            assert holder.stdout is not None
            holder.stdout.readline()  # "open"
            time.sleep(2)
            after = worker_rss_mb(proc.pid)
            holder.kill()
            holder.communicate()
        results[str(count)] = {
            "rss_before_mb": before,
            "rss_with_subscribers_mb": after,
            "kb_per_subscriber": (after - before) * 1024 / count,
        }
    return results


def bench_soak(
    workdir: Path, seconds: float, rate: float = 500.0, subscribers: int = 100, watch_all: int = 5
) -> dict[str, Any]:
    """Each callback belongs to one of ``subscribers - watch_all`` campaigns, each watched by one stream; the other
    ``watch_all`` streams watch every campaign. (100 streams of every campaign at 500/s would be 50 000
    deliveries/s, more than Python clients on the same two cores can read: they would all be catching up.)"""
    campaigns = subscribers - watch_all
    samples: list[tuple[float, float]] = []
    with service(workdir) as (http_port, grpc_port, proc):
        subscriber = clients("subscribe", f"127.0.0.1:{grpc_port}", subscribers, seconds + 5, str(campaigns))
        assert subscriber.stderr is not None
        subscriber.stderr.readline()
        with Poster(http_port, rate, seconds, campaigns) as poster:
            start = time.monotonic()
            samples.append((0.0, worker_rss_mb(proc.pid)))
            while poster.wait(min(30.0, max(1.0, seconds / 20))):
                samples.append((round(time.monotonic() - start, 1), worker_rss_mb(proc.pid)))
            samples.append((round(time.monotonic() - start, 1), worker_rss_mb(proc.pid)))
        delivered = json.loads(subscriber.communicate(timeout=120)[0])
    warm = samples[len(samples) // 4][1]
    return {
        "seconds": seconds,
        "rate": rate,
        "subscribers": subscribers,
        "watch_all": watch_all,
        "sent": poster.sent,
        "failed": poster.failed,
        "deliveries": delivered["deliveries"],
        "expected_deliveries": poster.sent * (1 + watch_all),
        "latency_p99_ms": delivered["p99_ms"],
        "rss_mb": samples,
        "rss_growth_after_warmup_mb": samples[-1][1] - warm,
    }


def table(results: dict[str, Any]) -> str:
    lines = ["| measure | routee-callbacks | baseline | ratio |", "| --- | --- | --- | --- |"]
    ingress = results["ingress"]
    lines.append(
        f"| ingress req/s (p50 / p99 ms) | {ingress['ours']['rps']:.0f} ({ingress['ours']['p50_ms']:.1f} / "
        f"{ingress['ours']['p99_ms']:.1f}), {ingress['ours']['errors']} errors | {ingress['baseline']['rps']:.0f} "
        f"({ingress['baseline']['p50_ms']:.1f} / {ingress['baseline']['p99_ms']:.1f}) | {ingress['ratio']:.2f}x |"
    )
    for count, fan in results["fanout"].items():
        ours, base = fan["ours"], fan["baseline"]
        lines.append(
            f"| fan-out {count} subs @ {fan['publishes_per_second']:g}/s: p50 / p99 ms, deliveries/s "
            f"| {ours['p50_ms']:.1f} / {ours['p99_ms']:.1f}, {ours['per_second']:.0f} "
            f"| {base['p50_ms']:.1f} / {base['p99_ms']:.1f}, {base['per_second']:.0f} "
            f"| p99 {fan['p99_ratio']:.2f}x, deliveries {fan['deliveries_ratio'] or float('nan'):.2f}x |"
        )
    unary = results["unary"]
    lines.append(
        f"| GetMessageStatus QPS (32 concurrent) | {unary['ours']['qps']:.0f} | {unary['baseline']['qps']:.0f} "
        f"| {unary['ratio']:.2f}x |"
    )
    for count, memory in results["memory"].items():
        lines.append(
            f"| resident memory, {count} idle subscribers | {memory['rss_with_subscribers_mb']:.0f} MiB "
            f"({memory['kb_per_subscriber']:.1f} KiB each, {memory['rss_before_mb']:.0f} MiB before) | | |"
        )
    if "soak" in results:
        soak = results["soak"]
        lines.append(
            f"| soak {soak['seconds']:g} s @ {soak['rate']:g}/s, {soak['subscribers']} subs "
            f"({soak['watch_all']} of every campaign) | {soak['sent']} sent, "
            f"{soak['failed']} failed, {soak['deliveries']}/{soak['expected_deliveries']} delivered, RSS "
            f"{soak['rss_mb'][0][1]:.0f}→{soak['rss_mb'][-1][1]:.0f} MiB "
            f"(+{soak['rss_growth_after_warmup_mb']:.1f} after warm-up) | | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (CI)")
    parser.add_argument("--soak-seconds", type=float, default=600, help="soak length; 0 skips it (default: 600)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    if not Path(WRK).is_absolute():
        raise SystemExit("bench: wrk is needed (Debian: apt-get install wrk)")
    seconds = 2.0 if args.quick else 10.0
    rounds = 1 if args.quick else 3
    counts = [1, 10] if args.quick else [1, 100, 1000, 10000]
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {
            name: metadata.version(name) for name in ("grpcio", "protobuf", "falcon", "gunicorn", "uvicorn", "pydantic")
        },
    }
    with tempfile.TemporaryDirectory(prefix="routee-bench-") as tmp:
        workdir = Path(tmp)
        print("ingress ...", file=sys.stderr, flush=True)
        results["ingress"] = bench_ingress(workdir, seconds, rounds)
        print("fan-out ...", file=sys.stderr, flush=True)
        results["fanout"] = bench_fanout(workdir, counts, seconds, rounds)
        print("unary ...", file=sys.stderr, flush=True)
        results["unary"] = bench_unary(workdir, seconds)
        print("memory ...", file=sys.stderr, flush=True)
        results["memory"] = bench_memory(workdir, [10] if args.quick else [1000, 10000])
        soak_seconds = 3.0 if args.quick else args.soak_seconds
        if soak_seconds:
            print(f"soak {soak_seconds:g}s ...", file=sys.stderr, flush=True)
            results["soak"] = bench_soak(workdir, soak_seconds, rate=50 if args.quick else 500)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
