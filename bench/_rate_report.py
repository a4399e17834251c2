"""Benchmark helper for `rate_bench.py`: what a run's gate log says (429 share, windows, tokens), the
verdicts, and the markdown table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fair_runners.testing.ratelimit import Arrival, GateLog


def gate_stats(arrivals: list[list[Any]], start: float, end: float) -> dict[str, Any]:
    """The gate's view of the arrivals in `[start, end]` (one run): counts, 429 share, busiest windows."""
    log = GateLog()
    for at, accepted, tokens in arrivals:
        if start <= at <= end:
            log.add(Arrival(at, bool(accepted), int(tokens)))
    inside = log.arrivals()
    accepted = sum(1 for a in inside if a.accepted)
    rejected = len(inside) - accepted
    return {
        "arrivals": len(inside),
        "accepted": accepted,
        "rejected": rejected,
        "share_429": round(rejected / len(inside), 4) if inside else 0.0,
        "tokens_admitted": sum(a.tokens for a in inside if a.accepted),
        "first_send_s": round(inside[0].at - start, 3) if inside else None,
        "second_send_s": round(inside[1].at - start, 3) if len(inside) > 1 else None,
        "last_send_s": round(inside[-1].at - start, 3) if inside else None,
        "max_arrivals_100ms": log.max_in_window(0.1, accepted_only=False),
        "max_accepted_1s": log.max_in_window(1.0),
        "max_accepted_60s": log.max_in_window(60.0),
        "max_arrivals_1s": log.max_in_window(1.0, accepted_only=False),
        "max_arrivals_60s": log.max_in_window(60.0, accepted_only=False),
        "max_tokens_1s": log.max_in_window(1.0, tokens=True),
        "max_tokens_60s": log.max_in_window(60.0, tokens=True),
    }


def pace_digest(pace: list[dict[str, Any]]) -> dict[str, Any]:
    """The pacer's reports (one a second at most) boiled down: the pace applied, how often it backed off."""
    if not pace:
        return {"reports": 0}
    paces = [p["pace_requests_per_minute"] for p in pace if p["pace_requests_per_minute"]]
    token_paces = [p["pace_tokens_per_minute"] for p in pace if p["pace_tokens_per_minute"]]
    return {
        "reports": len(pace),
        "first_report_s": pace[0]["t"],
        "pace_rpm_min": round(min(paces), 1) if paces else None,
        "pace_rpm_last": round(paces[-1], 1) if paces else None,
        "pace_tpm_min": round(min(token_paces), 1) if token_paces else None,
        "pace_tpm_last": round(token_paces[-1], 1) if token_paces else None,
        "backing_off_reports": sum(1 for p in pace if p["backing_off"]),
        "sent_rpm_max": max(p["requests_per_minute"] for p in pace),
        "rate_limited_last": pace[-1]["rate_limited"],
    }


@dataclass
class Row:
    """One line of the table: a measure of one run of one workload, against its target (if any)."""

    workload: str
    run: str
    measure: str
    value: str
    target: str = ""
    verdict: str = ""
    note: str = ""


@dataclass
class Table:
    """The rows, in order."""

    rows: list[Row] = field(default_factory=list)

    def check(self, workload: str, run: str, measure: str, value: float, limit: float, unit: str) -> bool:
        """A row for `value` against `<= limit`; True when met."""
        met = value <= limit
        if met:
            verdict = "met"
        else:
            over = value - limit
            verdict = f"**missed** by {_fmt(over, unit)} ({over / limit:.0%})" if limit else "**missed**"
        self.rows.append(Row(workload, run, measure, _fmt(value, unit), f"<= {_fmt(limit, unit)}", verdict))
        return met

    def info(self, workload: str, run: str, measure: str, value: str, note: str = "") -> None:
        """A row without a target."""
        self.rows.append(Row(workload, run, measure, value, note=note))

    def markdown(self) -> str:
        """The table in markdown."""
        head = "| Workload | Run | Measure | Value | Target | Verdict | Notes |\n" + "| --- " * 7 + "|"
        lines = [
            f"| {r.workload} | {r.run} | {r.measure} | {r.value} | {r.target} | {r.verdict} | {r.note} |"
            for r in self.rows
        ]
        return "\n".join([head, *lines])


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:.2f}%"
    if unit == "x":
        return f"{value:.3f}x"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:g}{unit}"


def header(facts: dict[str, Any]) -> str:
    """The lines above the table: command, machine, pinning, load, duration."""
    m = facts["machine"]
    loads = facts["loadavg"]
    return "\n".join(
        [
            f"Command: `{facts['command']}` ({facts['started_utc']}, {facts['duration_s']:.0f} s in all)",
            "",
            f"Machine: {m['cpu_model']}, {m['cpus']} CPUs ({m['usable_cores']} usable), "
            f"Python {m['python']}, {m['platform']}; {facts['pinning']}; "
            f"calibration loop {facts['calibration_s']} s (lower is faster); "
            f"load average {'/'.join(map(str, loads['before']))} before, "
            f"{'/'.join(map(str, loads['after']))} after.",
            "",
            "Each workload runs in fresh processes: the provider (a loopback app behind `RateLimitGate`) in "
            "one, the invocation in another, which runs the request twice: **cold** (its first run: the "
            "pacer probes or starts from nothing) and **warm** (right after, in the same process, as a warm "
            "Lambda gets it). 429 share = the gate's rejected / all arrivals during the run.",
        ]
    )
