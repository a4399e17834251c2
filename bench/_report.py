"""The benchmark's verdicts (each target: met, or missed by how much) and its markdown table."""

from __future__ import annotations

import statistics
from typing import Any

# The targets of issue "A lean house on kept libraries".
W1_WALL_X = 1.10  # wall time / critical path, both modes
W1_CPU_MS = {"alquimia": 1.5, "llm": 4.0}  # whole-invocation CPU per turn
W1_RSS_MB = 200.0
W2_RATIO = 1.05  # ours / the abatch peer (median walls)
W3_SPEEDUP = 30.0  # times faster than the sequential Fair-Forge runner
COLD_S = 0.4
_CLASSES = {"openai": "ChatOpenAI", "groq": "ChatGroq"}
_WHERE = {
    "lambda": "Lambda's dependencies only (`.bench/venv-lambda`)",
    "dev": "dev virtualenv (also the `local` and `dev` extras)",
}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians (wall, CPU per turn, server CPU) and the highest peak RSS of a mode's runs."""
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "wall_s_runs": [r["wall_s"] for r in runs],
        "cpu_ms_per_turn": statistics.median(r["cpu_ms_per_turn"] for r in runs),
        "cpu_ms_per_turn_runs": [r["cpu_ms_per_turn"] for r in runs],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "server_cpu_s": statistics.median(r["server_cpu_s"] for r in runs),
        "failures": sum(r["failures"] for r in runs),
        "runs": runs,
    }


def verdict(name: str, value: float, limit: float, unit: str, at_most: bool = True) -> dict[str, Any]:
    """A target's outcome: met, or missed by the gap (in `unit` and in percent of the limit)."""
    met = value <= limit if at_most else value >= limit
    gap = abs(value - limit)
    text = "met" if met else f"missed by {_num(gap)}{unit} ({gap / limit:.0%})"
    return {"target": name, "value": value, "limit": limit, "at_most": at_most, "met": met, "text": text}


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target the results can judge, in table order."""
    found: list[dict[str, Any]] = []
    w1 = results.get("w1")
    if w1:
        critical = w1["workload"]["critical_path_s"]
        for mode, row in w1["modes"].items():
            found.append(
                verdict(f"W1 {mode}: wall / critical path", row["wall_s"] / critical, W1_WALL_X, "x")
            )
            found.append(verdict(f"W1 {mode}: CPU per turn", row["cpu_ms_per_turn"], W1_CPU_MS[mode], " ms"))
            found.append(verdict(f"W1 {mode}: peak RSS", row["peak_rss_mb"], W1_RSS_MB, " MB"))
    w2 = results.get("w2")
    if w2:
        found.append(verdict("W2: ours / abatch peer (median walls)", w2["ratio"], W2_RATIO, "x"))
    w3 = results.get("w3")
    if w3:
        for mode, row in w3["modes"].items():
            if row.get("speedup"):
                found.append(verdict(f"W3 {mode}: x faster", row["speedup"], W3_SPEEDUP, "x", at_most=False))
    for where, cold in (results.get("cold_start") or {}).items():
        found.append(verdict(f"cold start ({where}): import handler.app", cold["median_s"], COLD_S, " s"))
        loaded = verdict(f"cold start ({where}): LangChain loaded", float(cold["langchain_loaded"]), 0.0, "")
        found.append(loaded | {"text": "met" if loaded["met"] else "missed: LangChain was imported"})
    return found


def _num(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _mode(mode: str, provider: str) -> str:
    return f"llm ({_CLASSES[provider]})" if mode == "llm" else mode


def _loads(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values) or "unknown"


def _runs(values: list[float], unit: str = "") -> str:
    return ", ".join(f"{_num(v)}{unit}" for v in values)


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def table(results: dict[str, Any]) -> str:
    """The markdown table for the README (machine facts first)."""
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, Python {m['python']}; {results['pinning']}; "
        f"calibration loop {m['calibration_s']} s (lower is faster); load average "
        f"{_loads(results['loadavg_start'])} at the start, {_loads(results['loadavg_end'])} at the end.",
        "",
        _row("Workload", "Measure", "fair-runners", "Target", "Verdict", "Peer / reference"),
        _row(*["---"] * 6),
    ]
    found = {v["target"]: v["text"] for v in verdicts(results)}
    w1 = results.get("w1")
    if w1:
        critical = w1["workload"]["critical_path_s"]
        for mode, row in w1["modes"].items():
            label, n = f"W1 {w1['label']}, {_mode(mode, w1['provider'])}", len(row["runs"])
            times = f"{_num(row['wall_s'])} s = **{row['wall_s'] / critical:.3f}x** the critical path"
            lines += [
                _row(
                    label,
                    f"wall time, median of {n} ({_runs(row['wall_s_runs'], ' s')})",
                    f"{times} {_num(critical)} s",
                    f"<= {W1_WALL_X:.2f}x",
                    found.get(f"W1 {mode}: wall / critical path", ""),
                    "",
                ),
                _row(
                    label,
                    f"invocation CPU per turn (user+sys), median of {n} "
                    f"({_runs(row['cpu_ms_per_turn_runs'])})",
                    f"{row['cpu_ms_per_turn']:.3f} ms",
                    f"<= {W1_CPU_MS[mode]:g} ms",
                    found.get(f"W1 {mode}: CPU per turn", ""),
                    "",
                ),
                _row(
                    label,
                    f"peak RSS, highest of {n}",
                    f"{row['peak_rss_mb']:.0f} MB",
                    f"<= {W1_RSS_MB:.0f} MB",
                    found.get(f"W1 {mode}: peak RSS", ""),
                    "",
                ),
            ]
    w2 = results.get("w2")
    if w2:
        peer, ours = w2["peer"], w2["ours"]
        label = f"W2 {w2['label']}, {_mode('llm', w2['provider'])} vs `abatch` rounds"
        theirs = f"{_num(peer['wall_s'])} s ({_runs(peer['wall_s_runs'], ' s')})"
        lines += [
            _row(
                label,
                f"wall time, median of {len(peer['runs'])} each",
                f"{_num(ours['wall_s'])} s",
                f"<= {W2_RATIO:.2f}x the peer",
                found.get("W2: ours / abatch peer (median walls)", ""),
                f"{theirs}; ours / peer = **{w2['ratio']:.3f}x**",
            ),
            _row(
                label,
                "process CPU per turn, median",
                f"{ours['cpu_ms_per_turn']:.3f} ms",
                "",
                "",
                f"{peer['cpu_ms_per_turn']:.3f} ms",
            ),
            _row(
                label,
                "peak RSS, highest",
                f"{ours['peak_rss_mb']:.0f} MB",
                "",
                "",
                f"{peer['peak_rss_mb']:.0f} MB",
            ),
        ]
    w3 = results.get("w3")
    if w3:
        for mode, row in w3["modes"].items():
            ours, base = row["ours"], row.get("baseline")
            reference = "not run"
            if base:
                reference = f"{_num(base['wall_s'])} s ({w3['baseline']}); **{_num(row['speedup'])}x** faster"
            lines.append(
                _row(
                    f"W3 {w3['label']}, {_mode(mode, w3.get('provider', 'groq'))}",
                    f"wall time, median of {len(ours['runs'])} ({_runs(ours['wall_s_runs'], ' s')})",
                    f"{_num(ours['wall_s'])} s",
                    f">= {W3_SPEEDUP:.0f}x faster",
                    found.get(f"W3 {mode}: x faster", ""),
                    reference,
                )
            )
    for where, cold in (results.get("cold_start") or {}).items():
        label = f"cold start, {_WHERE[where]}"
        lines += [
            _row(
                label,
                f"`import handler.app`, median of {cold['runs']} ({_runs(cold['samples_s'], ' s')})",
                f"{cold['median_s']:.3f} s",
                f"<= {COLD_S} s",
                found.get(f"cold start ({where}): import handler.app", ""),
                "",
            ),
            _row(
                label,
                "LangChain loaded (import and a first Alquimia run)",
                "yes" if cold["langchain_loaded"] else "no",
                "no",
                found.get(f"cold start ({where}): LangChain loaded", ""),
                "",
            ),
            _row(
                label,
                "import + first 1-turn Alquimia request, median",
                f"{cold['import_and_first_request_median_s']:.3f} s",
                "",
                "",
                "",
            ),
        ]
    return "\n".join(lines)


def verdict_lines(results: dict[str, Any]) -> list[str]:
    """One line per target, for the console."""
    return [f"{'MET ' if v['met'] else 'MISS'}  {v['target']}: {v['text']}" for v in verdicts(results)]
