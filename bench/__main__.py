"""``make bench``: measure routee-callbacks against bare baselines, side by side, on this machine.

python -m bench [--quick] [--only NAME ...] [--soak-seconds S] [--out FILE]

- ingress: the service (one and two workers) against a do-nothing Falcon endpoint on gunicorn's sync worker and
  the do-nothing Falcon ASGI ceiling on the service's own worker class, every round all four (bench/ingress.py);
- postgres: one instance on SQLite against one and two instances on PostgreSQL;
- cross_instance: publish-to-receive latency with the stream on the instance that took the callback, or another;
- commit_order: what taking sequences in commit order costs on PostgreSQL, and what skipping it breaks;
- fanout, unary, memory, soak: streams and reads (bench/streams.py);
- ab, ab_postgres: the working tree against ``--base REV``, alternating runs, CPU per answer side by side, on
  SQLite or PostgreSQL (bench/ab.py);
- forget: ``routee-callbacks forget`` on a database of 100 000 messages, on SQLite and PostgreSQL (bench/forget.py);
- prune: ingest latency while the writer prunes 1 000 000 old rows, and after (bench/prune.py);
- campaigns: GetCampaignSummary on a campaign of 1 000 000 messages next to a point read, ListMessageStatuses
  pages per second, on SQLite and PostgreSQL (bench/campaigns.py).

Each measure reports min, median and max over rounds and each ratio within its round. Results go to
bench/results/latest.json; the Markdown tables to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.ab import bench_ab
from bench.campaigns import bench_campaigns
from bench.commit_order import bench_commit_order
from bench.forget import bench_forget
from bench.harness import ROOT, WRK, free_port
from bench.ingress import bench_ingress, bench_postgres
from bench.prune import bench_prune
from bench.report import table
from bench.streams import bench_cross_instance, bench_fanout, bench_memory, bench_soak, bench_unary

MEASURES = (
    "ab",
    "ab_postgres",
    "forget",
    "prune",
    "ingress",
    "postgres",
    "cross_instance",
    "commit_order",
    "fanout",
    "unary",
    "memory",
    "soak",
    "campaigns",
)


@contextlib.contextmanager
def postgres_databases(count: int) -> Any:
    """A throwaway PostgreSQL cluster (the tests' helper: Debian's binaries, a temporary directory)."""
    sys.path.insert(0, str(ROOT / "tests"))  # The one implementation of a throwaway cluster lives with the tests.
    from support.postgres import postgres_server

    with postgres_server(free_port()) as server:
        yield [server.create_database() for _ in range(count)], server.process.pid


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds each (CI)")
    parser.add_argument("--only", nargs="+", choices=MEASURES, help="run only these measures")
    parser.add_argument("--rounds", type=int, help="rounds per measure (default: 3, or 1 with --quick)")
    parser.add_argument("--seconds", type=float, help="seconds per round (default: 10, or 2 with --quick)")
    parser.add_argument("--base", default="HEAD", help="the revision the A/B measures compare with (default: HEAD)")
    parser.add_argument("--soak-seconds", type=float, default=600, help="soak length; 0 skips it (default: 600)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    if not Path(WRK).is_absolute():
        raise SystemExit("bench: wrk is needed (Debian: apt-get install wrk)")
    wanted = set(args.only or MEASURES) - (set() if args.only else {"ab", "ab_postgres"})
    seconds, rounds = (2.0, 1) if args.quick else (10.0, 3)
    seconds, rounds = args.seconds or seconds, args.rounds or rounds
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {
            name: metadata.version(name)
            for name in ("grpcio", "protobuf", "falcon", "gunicorn", "uvicorn", "pydantic", "psycopg")
        },
        "quick": args.quick,
    }

    def run(name: str, measure: Any, *measure_args: Any) -> None:
        if name in wanted:
            print(f"{name} ...", file=sys.stderr, flush=True)
            results[name] = measure(*measure_args)

    with tempfile.TemporaryDirectory(prefix="routee-bench-") as tmp:
        workdir = Path(tmp)
        run("ab", bench_ab, workdir, args.base, seconds, rounds)
        if "ab_postgres" in wanted:
            with postgres_databases(2) as (databases, postmaster):
                run(
                    "ab_postgres",
                    lambda: bench_ab(
                        workdir, args.base, seconds, rounds, database=(databases[0], databases[1]), pid=postmaster
                    ),
                )
        run("ingress", bench_ingress, workdir, seconds, rounds)
        run("prune", bench_prune, workdir, 20_000 if args.quick else 1_000_000, seconds)
        if wanted & {"postgres", "cross_instance", "commit_order", "campaigns", "forget"}:
            with postgres_databases(6) as (databases, postmaster):
                run("postgres", bench_postgres, workdir, databases[:2], postmaster, seconds, rounds)
                run("cross_instance", bench_cross_instance, workdir, databases[2], seconds, rounds)
                run("commit_order", bench_commit_order, databases[4], min(seconds, 5.0), rounds)
                engines = {"sqlite": str(workdir / "campaign.db"), "postgres": databases[3]}
                erasing = {"sqlite": str(workdir / "forget.db"), "postgres": databases[5]}
                run("forget", bench_forget, erasing, 5_000 if args.quick else 100_000)
                run(
                    "campaigns", bench_campaigns, workdir, engines, 20_000 if args.quick else 1_000_000, seconds, rounds
                )
        run("fanout", bench_fanout, workdir, [1, 10] if args.quick else [1, 100, 1000, 10000], seconds, rounds)
        run("unary", bench_unary, workdir, seconds, rounds)
        run("memory", bench_memory, workdir, [10] if args.quick else [1000, 10000])
        soak_seconds = 3.0 if args.quick else args.soak_seconds
        if soak_seconds:
            run("soak", bench_soak, workdir, soak_seconds, 50.0 if args.quick else 500.0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))


def cpu_model() -> str:
    """The processor's model name: "a machine of the same kind" may be another processor, and that moves every
    figure (this project's runs have seen AMD EPYC and Intel Xeon hosts of the same 2-vCPU kind)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
