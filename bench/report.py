"""The tables of a benchmark run, in Markdown, as docs/benchmarks.md shows them."""

from __future__ import annotations

from typing import Any

from bench.ingress import TARGETS


def _mmm(values: dict[str, float], digits: int = 0) -> str:
    return " / ".join(f"{values[key]:,.{digits}f}" for key in ("min", "median", "max"))


def cpu_table(results: dict[str, Any]) -> list[str]:
    """CPU per answer: the measure a shared machine does not blur (see docs/benchmarks.md)."""
    lines = [
        "| contender | CPU µs per answer, server (min / median / max) | database server | total |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in results.items():
        if isinstance(row, dict) and "cpu_us_per_answer" in row:
            database = row.get("database_cpu_us_per_answer")
            total = row.get("total_cpu_us_per_answer", row["cpu_us_per_answer"])
            lines.append(
                f"| {name} | {_mmm(row['cpu_us_per_answer'])} | {_mmm(database) if database else '—'} | {_mmm(total)} |"
            )
    if results.get("cpu_ratios"):
        lines += ["", "| CPU ratio (each round's own) | min / median / max |", "| --- | --- |"]
        lines += [f"| {name} | {_mmm(values, 2)} |" for name, values in results["cpu_ratios"].items()]
    rounds = "; ".join(
        ", ".join(
            f"{name} {result['cpu_s_server'] / max(1, result['answers']) * 1e6:,.0f}"
            for name, result in round_.items()
            if "cpu_s_server" in result
        )
        for round_ in results["rounds"]
    )
    return [*lines, "", f"Rounds (server CPU µs per answer): {rounds}.", ""]


def ingress_table(results: dict[str, Any]) -> list[str]:
    lines = [
        *cpu_table(results),
        "| contender | req/s min / median / max | p99 ms (median) | requests | accepted / duplicate (its metrics)"
        " | errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in results.items():
        if not isinstance(row, dict) or "rps" not in row:
            continue
        counted = f"{row['accepted']:,.0f} / {row['duplicate']:,.0f}" if "accepted" in row else "—"
        requests = f"{row['requests']:,.0f}" if "requests" in row else "—"
        p99 = row["p99_ms"]["median"]
        lines.append(f"| {name} | {_mmm(row['rps'])} | {p99:.1f} | {requests} | {counted} | {row['errors']} |")
    lines += [
        "",
        "| ratio (each round's own) | min / median / max | target | met in every round |",
        "| --- | --- | --- | --- |",
    ]
    for name, values in results["ratios"].items():
        target = TARGETS.get(name)
        met = "—" if target is None else ("yes" if values["min"] >= target else "no")
        lines.append(f"| {name} | {_mmm(values, 2)} | {'—' if target is None else f'≥ {target}'} | {met} |")
    rounds = "; ".join(
        ", ".join(f"{name} {result['rps']:,.0f}" for name, result in round_.items()) for round_ in results["rounds"]
    )
    lines += ["", f"Rounds (req/s): {rounds}."]
    if results["noisy"]:
        lines.append("**Noisy run**: a baseline moved more than 15 % between rounds; compare ratios, not rates.")
    return lines


def table(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    lines: list[str] = [f"Machine: {machine.get('cpus', '?')} CPUs, {machine.get('cpu', 'processor not recorded')}", ""]
    if "ingress" in results:
        lines += ["### Ingress (one instance, SQLite)", "", *ingress_table(results["ingress"])]
    if "postgres" in results:
        lines += ["", "### Ingress on PostgreSQL", "", *ingress_table(results["postgres"])]
    for name, engine in (("ab", "SQLite"), ("ab_postgres", "PostgreSQL")):
        if name in results:
            base = results[name]["base_revision"]
            lines += ["", f"### A/B on {engine}: base {base} against the working tree (head)", ""]
            lines += ingress_table(results[name])
    if "cross_instance" in results:
        cross = results["cross_instance"]
        lines += [
            "",
            "### Publish to receive, one stream, callbacks at 50/s (PostgreSQL, two instances)",
            "",
            "| stream on | p50 ms min / median / max | p99 ms min / median / max |",
            "| --- | --- | --- |",
            f"| the instance that took the callback | {_mmm(cross['same_instance']['p50_ms'], 1)} |"
            f" {_mmm(cross['same_instance']['p99_ms'], 1)} |",
            f"| another instance | {_mmm(cross['other_instance']['p50_ms'], 1)} |"
            f" {_mmm(cross['other_instance']['p99_ms'], 1)} |",
        ]
    if "prune" in results:
        prune = results["prune"]
        lines += ["", f"### Retention under load: {prune['rows']:,} old rows pruned while wrk posts", ""]
        lines += ["| run | req/s | p99 ms | errors |", "| --- | --- | --- | --- |"]
        for name in ("while_pruning", "after"):
            run = prune[name]
            lines.append(f"| {name.replace('_', ' ')} | {run['rps']:,.0f} | {run['p99_ms']:.1f} | {run['errors']} |")
        lines.append("")
        lines.append(
            f"Pruned during the first run: {prune['pruned_during_the_first_run']:,} rows; left after it:"
            f" {prune['old_left_after_the_first_run']:,}; {prune['old_left']:,} left"
            f" {prune['pruned_within_seconds']} s after the service's start."
        )
    if "forget" in results:
        lines += ["", "### Erasure: `routee-callbacks forget` on a database of many messages", ""]
        lines += ["| engine | messages | seconds | what it printed |", "| --- | --- | --- | --- |"]
        for engine, row in results["forget"].items():
            lines.append(f"| {engine} | {row['messages']:,} | {row['forget_seconds']} | {row['output']} |")
    if "commit_order" in results:
        order = results["commit_order"]
        lines += [
            "",
            "### Commit order on PostgreSQL: 8 writers, batches of 16, a tailer following",
            "",
            "| sequences taken | events/s min / median / max | events a tailer skipped, by round |",
            "| --- | --- | --- |",
        ]
        for name, how in (("ordered", "under the log's lock (the service)"), ("unordered", "from a plain SEQUENCE")):
            row = order[name]
            skipped = ", ".join(f"{s:,} of {e:,}" for s, e in zip(row["skipped"], row["events"], strict=True))
            lines.append(f"| {how} | {_mmm(row['events_per_second'])} | {skipped} |")
        lines += ["", f"Ordered / unordered, each round's own: {_mmm(order['ordered_vs_unordered'], 2)}."]
    if "fanout" in results:
        lines += [
            "",
            "### Fan-out (ours / bare grpc.aio)",
            "",
            "| streams @ rate | ours p50 / p99 ms (median) | bare p50 / p99 ms (median) | p99 ratio min / median / max"
            " | deliveries ratio (median) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for count, fan in results["fanout"].items():
            ours, base = fan["ours"], fan["baseline"]
            lines.append(
                f"| {count} @ {fan['publishes_per_second']:g}/s | {ours['p50_ms']['median']:.1f} / "
                f"{ours['p99_ms']['median']:.1f} | {base['p50_ms']['median']:.1f} / {base['p99_ms']['median']:.1f} | "
                f"{_mmm(fan['p99_ratio'], 2)} | {fan['deliveries_ratio']['median']:.2f} |"
            )
    if "unary" in results:
        unary = results["unary"]
        lines += [
            "",
            f"GetMessageStatus (32 concurrent): ours {_mmm(unary['ours_qps'])} QPS, bare {_mmm(unary['baseline_qps'])}"
            f" QPS, ratio {_mmm(unary['ratio'], 2)}, {unary['errors']} errors.",
        ]
    for count, memory in results.get("memory", {}).items():
        lines.append(
            f"Resident memory with {count} idle streams: {memory['rss_with_subscribers_mb']:.0f} MiB "
            f"({memory['kb_per_subscriber']:.1f} KiB each, {memory['rss_before_mb']:.0f} MiB before)."
        )
    if "soak" in results:
        soak = results["soak"]
        lines.append(
            f"Soak {soak['seconds']:g} s at {soak['rate']:g}/s with {soak['subscribers']} streams: {soak['sent']} sent,"
            f" {soak['failed']} failed, {soak['deliveries']}/{soak['expected_deliveries']} delivered, RSS "
            f"{soak['rss_mb'][0][1]:.0f}→{soak['rss_mb'][-1][1]:.0f} MiB"
            f" (+{soak['rss_growth_after_warmup_mb']:.1f} after warm-up)."
        )
    if "campaigns" in results:
        campaigns = results["campaigns"]
        lines += [
            "",
            f"### Campaign questions, one campaign of {campaigns['messages']:,} messages",
            "",
            "| engine | summary p50 ms | summary p99 ms | point read p99 ms | summary / point read p99"
            " | list pages/s (100) | pages/s, Failed only |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for engine in ("sqlite", "postgres"):
            if engine in campaigns:
                row = campaigns[engine]
                lines.append(
                    f"| {engine} | {_mmm(row['summary_p50_ms'], 2)} | {_mmm(row['summary_p99_ms'], 2)} |"
                    f" {_mmm(row['point_read_p99_ms'], 2)} | {_mmm(row['summary_to_point_read_p99'], 2)} |"
                    f" {_mmm(row['pages_per_second'])} | {_mmm(row['failed_pages_per_second'])} |"
                )
        lines += [
            "",
            "The whole campaign's snapshot (`include_snapshot`), with a point read and list pages beside it:",
            "",
            "| engine | snapshot items | snapshot s | point read p99 ms beside | list pages/s beside |",
            "| --- | --- | --- | --- | --- |",
        ]
        for engine in ("sqlite", "postgres"):
            if engine in campaigns and "snapshot_seconds" in campaigns[engine]:
                row = campaigns[engine]
                lines.append(
                    f"| {engine} | {_mmm(row['snapshot_items'])} | {_mmm(row['snapshot_seconds'], 1)} |"
                    f" {_mmm(row['point_read_p99_ms_beside_snapshot'], 2)} |"
                    f" {_mmm(row['pages_per_second_beside_snapshot'])} |"
                )
    return "\n".join(lines)
