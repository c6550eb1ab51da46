"""A/B: two source trees of the service side by side, in alternating short runs on the same machine.

``python -m bench --only ab --base REV`` checks REV out of this repository (``git archive``) and runs it and
the working tree (``head``) on the same interpreter and dependencies, each with its own database, beside the
do-nothing ASGI ceiling; every round runs all three in a rotating order. It reports CPU per answer and
throughput for each, the head/base CPU ratio within each round, and checks that each tree accepted every
request it answered (accepted + duplicate >= requests, from the service's own metrics; no error).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import ROOT, gunicorn, service, wrk, wrk_service
from bench.ingress import _rounds, summarise

GIT = shutil.which("git") or "git"


def checkout(revision: str, into: Path) -> Path:
    """The tree of ``revision`` of this repository, unpacked under ``into``."""
    archive = into / "base.tar"
    subprocess.run([GIT, "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), revision], check=True)
    tree = into / "base"
    with tarfile.open(archive) as unpacked:
        unpacked.extractall(tree, filter="data")
    return tree


def bench_ab(
    workdir: Path, base: str, seconds: float, rounds: int, *, database: tuple[str, str] | None = None, pid: int = 0
) -> dict[str, Any]:
    """Run the base revision and the working tree in alternating rounds; ``database`` gives each a PostgreSQL
    database (base's, head's) and ``pid`` that server's postmaster, whose CPU counts apart."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="routee-ab-", dir=workdir)))
        asgi_port, asgi_pid = stack.enter_context(
            gunicorn("bench.baseline_asgi:app", "-k", "bench.baseline_asgi.Worker")
        )
        base_database, head_database = database or (None, None)
        old = stack.enter_context(service(tmp, database=base_database, tree=checkout(base, tmp)))
        new = stack.enter_context(service(tmp, database=head_database, tree=ROOT))
        extra = {"database_pid": pid} if pid else {}
        results = _rounds(
            {
                "asgi_ceiling": lambda s: wrk(asgi_port, s, cpu={"server": asgi_pid}),
                "base": lambda s: wrk_service(old, s, **extra),
                "head": lambda s: wrk_service(new, s, **extra),
            },
            seconds,
            rounds,
            warm_up=min(seconds, 3),
        )
    summary = summarise(
        results,
        {"head_vs_base": ("head", "base"), "head_vs_ceiling": ("head", "asgi_ceiling")},
        cpu_ratios={
            "head_cpu_vs_base": ("head", "base"),
            "base_cpu_vs_ceiling": ("base", "asgi_ceiling"),
            "head_cpu_vs_ceiling": ("head", "asgi_ceiling"),
        },
    )
    summary["base_revision"] = subprocess.run(
        [GIT, "-C", str(ROOT), "rev-parse", "--short", base], capture_output=True, text=True, check=True
    ).stdout.strip()
    for name in ("base", "head"):  # wrk stops with requests in flight: a tree may keep more than wrk counted.
        row = summary[name]
        if row["errors"] or row["accepted"] + row["duplicate"] < row["requests"]:
            raise SystemExit(f"bench ab: {name} answered {row['requests']} but kept {row['accepted']}")
    return summary
