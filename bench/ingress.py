"""Ingress throughput: the service against its baselines, and its process models against each other.

Every round runs every contender once, in an order that rotates from round to round, all servers up
throughout, so each round's ratios compare what the machine could do at that moment.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from bench.harness import Service, gunicorn, noisy, service, spread, wrk, wrk_service, wrk_together

#: The service's targets (issue 13), checked in every round.
TARGETS = {"ours_vs_sync": 1.5, "ours_vs_asgi": 0.5, "two_workers_vs_sync": 2.0}


def _rounds(
    contenders: dict[str, Any], seconds: float, rounds: int, warm_up: float
) -> list[dict[str, dict[str, float]]]:
    """Run each contender once per round (rotating the order); each one first gets a warm-up run."""
    names = list(contenders)
    for name in names:
        contenders[name](warm_up)
    results = []
    for number in range(rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        results.append({name: contenders[name](seconds) for name in order})
    return results


def cpu_us_per_answer(result: dict[str, float], tree: str = "server") -> float:
    """CPU microseconds a process tree spent per 2xx answer in one run."""
    return result[f"cpu_s_{tree}"] / max(1.0, result["answers"]) * 1e6


def summarise(
    results: list[dict[str, dict[str, float]]],
    ratios: dict[str, tuple[str, str]],
    cpu_ratios: dict[str, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """min/median/max of every contender's CPU per answer, rate and p99, and of every ratio (each taken within
    one round): CPU ratios of the server's processes, and of server plus database where there is one."""
    summary: dict[str, Any] = {"rounds": results}
    for name in results[0]:
        summary[name] = {
            "rps": spread([result[name]["rps"] for result in results]),
            "p99_ms": spread([result[name]["p99_ms"] for result in results]),
            "errors": sum(result[name]["errors"] for result in results),
            "cpu_us_per_answer": spread([cpu_us_per_answer(result[name]) for result in results]),
        }
        if "cpu_s_database" in results[0][name]:
            summary[name]["database_cpu_us_per_answer"] = spread(
                [cpu_us_per_answer(result[name], "database") for result in results]
            )
            summary[name]["total_cpu_us_per_answer"] = spread(
                [cpu_us_per_answer(result[name]) + cpu_us_per_answer(result[name], "database") for result in results]
            )
        if "accepted" in results[0][name]:
            summary[name]["accepted"] = sum(result[name]["accepted"] for result in results)
            summary[name]["duplicate"] = sum(result[name]["duplicate"] for result in results)
            summary[name]["requests"] = sum(result[name]["requests"] for result in results)
    summary["ratios"] = {
        ratio: spread([result[ours]["rps"] / result[base]["rps"] for result in results])
        for ratio, (ours, base) in ratios.items()
    }
    summary["cpu_ratios"] = {
        ratio: spread([_total_cpu(result[ours]) / _total_cpu(result[base]) for result in results])
        for ratio, (ours, base) in (cpu_ratios or {}).items()
    }
    baselines = {base for _, base in ratios.values()}
    summary["noisy"] = any(noisy([result[base]["rps"] for result in results]) for base in baselines)
    return summary


def _total_cpu(result: dict[str, float]) -> float:
    """CPU per answer of the server and, where there is one, its database server."""
    return cpu_us_per_answer(result) + (cpu_us_per_answer(result, "database") if "cpu_s_database" in result else 0.0)


def bench_ingress(workdir: Path, seconds: float, rounds: int) -> dict[str, Any]:
    """The service (one and two workers, SQLite; Viber callbacks, and SMS reports to one worker) against gunicorn's
    sync worker and the do-nothing ASGI ceiling."""
    with contextlib.ExitStack() as stack:
        sync_port, sync_pid = stack.enter_context(gunicorn("bench.baseline_wsgi:app"))
        asgi_port, asgi_pid = stack.enter_context(
            gunicorn("bench.baseline_asgi:app", "-k", "bench.baseline_asgi.Worker")
        )
        one = stack.enter_context(service(workdir))
        two = stack.enter_context(service(workdir, "--workers", "2"))
        results = _rounds(
            {
                "sync_baseline": lambda s: wrk(sync_port, s, cpu={"server": sync_pid}),
                "asgi_ceiling": lambda s: wrk(asgi_port, s, cpu={"server": asgi_pid}),
                "ours": lambda s: wrk_service(one, s),
                "ours_two_workers": lambda s: wrk_service(two, s),
                "ours_sms": lambda s: wrk_service(one, s, sms=True),
            },
            seconds,
            rounds,
            warm_up=min(seconds, 3),
        )
    return summarise(
        results,
        {
            "ours_vs_sync": ("ours", "sync_baseline"),
            "ours_vs_asgi": ("ours", "asgi_ceiling"),
            "two_workers_vs_sync": ("ours_two_workers", "sync_baseline"),
            "two_workers_vs_one": ("ours_two_workers", "ours"),
        },
        cpu_ratios={
            "ours_cpu_vs_ceiling": ("ours", "asgi_ceiling"),
            "two_workers_cpu_vs_ceiling": ("ours_two_workers", "asgi_ceiling"),
            "two_workers_cpu_vs_one": ("ours_two_workers", "ours"),
            "sms_cpu_vs_viber": ("ours_sms", "ours"),
        },
    )


def bench_postgres(workdir: Path, databases: list[str], postmaster: int, seconds: float, rounds: int) -> dict[str, Any]:
    """One instance on SQLite against one and two instances on PostgreSQL (two wrk at once, 16 connections each);
    the CPU of the PostgreSQL server's processes (``postmaster``'s tree) is measured apart and added to theirs."""
    with contextlib.ExitStack() as stack:
        sqlite = stack.enter_context(service(workdir))
        single = stack.enter_context(service(workdir, database=databases[0]))
        pair: list[Service] = [stack.enter_context(service(workdir, database=databases[1])) for _ in range(2)]
        results = _rounds(
            {
                "sqlite_one_instance": lambda s: wrk_service(sqlite, s),
                "postgres_one_instance": lambda s: wrk_service(single, s, database_pid=postmaster),
                "postgres_two_instances": lambda s: wrk_together(pair, s, database_pid=postmaster),
            },
            seconds,
            rounds,
            warm_up=min(seconds, 3),
        )
    return summarise(
        results,
        {
            "postgres_one_vs_sqlite": ("postgres_one_instance", "sqlite_one_instance"),
            "postgres_two_vs_one": ("postgres_two_instances", "postgres_one_instance"),
        },
        cpu_ratios={"postgres_cpu_vs_sqlite": ("postgres_one_instance", "sqlite_one_instance")},
    )
