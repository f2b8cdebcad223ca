"""The report: ``report.md`` (summary, then one section per check with its tables, plots and
discussion), ``results.json`` and ``results.csv`` (every row, machine-readable)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from simsched.validate.stats import CheckResult, Row, fmt

PERCENT_QUANTITIES = ("capacity gain", "gain over k = 1", "violations", "utilisation")


def _num(row: Row, x: float | None) -> str:
    if row.quantity in PERCENT_QUANTITIES and x is not None and math.isfinite(x):
        return f"{x:+.1%}" if "gain" in row.quantity else f"{x:.1%}"
    return fmt(x)


def _extra(v: Any) -> str:
    return fmt(v) if isinstance(v, float) else str(v)


def rows_table(rows: list[Row]) -> str:
    extras: list[str] = []
    for r in rows:
        extras += [k for k in r.extra if k not in extras]
    head = ["point", "quantity", "expected", "simulated (95% CI)", "diff", "verdict", *extras]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lo, hi = r.mean - r.half, r.mean + r.half
        ci = f"{_num(r, r.mean)} [{_num(r, lo)}, {_num(r, hi)}]" if math.isfinite(r.half) else _num(r, r.mean)
        diff = f"{r.rel_diff:+.2%}" if math.isfinite(r.rel_diff) else "—"
        verdict = f"**{r.verdict}**" if r.verdict == "FAIL" else r.verdict
        cells = [r.point, r.quantity, _num(r, r.expected), ci, diff, verdict]
        cells += [_extra(r.extra[k]) if k in r.extra else "" for k in extras]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(c: CheckResult) -> str:
    return "PASS" if c.passed else "**FAIL**"


def summary_table(results: list[CheckResult]) -> str:
    lines = ["| check | verdict | judged items | failed | wall time (s) |", "|---|---|---|---|---|"]
    for c in results:
        lines.append(f"| {c.title} | {_verdict(c)} | {c.judged} | {c.failures} | {c.wall_s:.0f} |")
    return "\n".join(lines)


def write_report(out: Path, results: list[CheckResult], meta: dict[str, Any]) -> list[Path]:
    """Write the three files into ``out`` and return their paths (plots are already there)."""
    parts = [
        "# simsched validation report",
        "",
        f"Command: `{meta['command']}` · commit `{meta['commit']}` · {meta['date']} · "
        f"{meta['replications']} replications per point · seed {meta['seed']} · total {meta['wall_s']:.0f} s"
        + (f" ({meta['jobs']} processes)" if meta.get("jobs", 1) > 1 else "")
        + (" · **quick mode (reduced sizes: a smoke run, not evidence)**" if meta.get("quick") else ""),
        "",
        "Each row states the expected value, the simulated mean over replications with different seeds "
        "and its 95% Student-t confidence interval, and the verdict. A row passes when the expected value "
        "lies inside the CI widened by the stated model tolerance, *and* the CI is narrow enough to mean "
        "something (a wide CI fails). *info* rows have no closed form to judge against; the check's "
        "conditions judge them.",
        "",
        summary_table(results),
        "",
    ]
    for c in results:
        parts += [f"## {c.title}", "", f"Verdict: {_verdict(c)} ({c.judged - c.failures}/{c.judged} judged items "
                  f"passed, {c.wall_s:.0f} s)", "", c.setup, ""]
        if c.show_rows:
            parts += [rows_table(c.rows), ""]
        for heading, table in c.tables:
            parts += [f"**{heading}**", "", table, ""]
        if c.conditions:
            parts += ["Conditions:", ""] + [f"- {'PASS' if ok else '**FAIL**'}: {text}" for text, ok in c.conditions]
            parts.append("")
        parts += [f"![{p}]({p})" for p in c.plots] + [""]
        if c.discussion:
            parts += [c.discussion, ""]
    report = out / "report.md"
    report.write_text("\n".join(parts))
    flat = [{"check": c.key, "point": r.point, "quantity": r.quantity, "expected": r.expected,
             "mean": r.mean, "ci95_half": r.half, "rel_diff": r.rel_diff, "verdict": r.verdict,
             "values": r.values, **{f"extra.{k}": v for k, v in r.extra.items()}}
            for c in results for r in c.rows]
    data = {"meta": meta,
            "checks": [{"key": c.key, "title": c.title, "passed": c.passed, "judged": c.judged,
                        "failures": c.failures, "wall_s": c.wall_s,
                        "conditions": [{"text": t, "passed": ok} for t, ok in c.conditions]} for c in results],
            "rows": flat}
    js = out / "results.json"
    js.write_text(json.dumps(_clean(data), indent=1) + "\n")
    csv_path = out / "results.csv"
    keys: list[str] = []
    for row in flat:
        keys += [k for k in row if k not in keys and k != "values"]
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for row in flat:
            w.writerow(_clean(row))
    return [report, js, csv_path]


def _clean(x: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
