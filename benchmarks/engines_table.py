"""The README's table of ``+sweep=engines``: ``python benchmarks/engines_table.py SWEEP_DIR [λ]``.

Per (engine, scheduler): the capacity at a 5% SLA-violation target (the sweep report's
interpolation on the λ grid, ``capacity.csv``; ">=" marks the grid's top) and the p99 TTFT and
TPOT (means over seeds) at one common λ (default: the largest λ of the grid at which every
(engine, scheduler) is within the 5% target, else the smallest λ). Run-to-completion runs
report no TPOT percentiles; their mean time between tokens is shown instead.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def grid_capacity(table: pd.DataFrame, rate_col: str, target: float = 0.05) -> pd.DataFrame:
    """Capacity at ``target`` by linear interpolation of the mean violation rate between the
    last grid λ within the target and the next one (what the sweep report does for λ grids)."""
    rows = []
    mean = table.groupby(["override.engine", "scheduler", rate_col])["sla_violation_rate"].mean()
    for (eng, sch), v in mean.groupby(level=[0, 1]):
        lam = v.index.get_level_values(2).to_numpy(dtype=float)
        viol = v.to_numpy(dtype=float)
        ok = viol <= target
        if not ok[0]:
            cap, bound = float("nan"), "="
        elif ok.all():
            cap, bound = lam[-1], ">="
        else:
            k = int(ok.argmin())
            cap = lam[k - 1] + (target - viol[k - 1]) * (lam[k] - lam[k - 1]) / (viol[k] - viol[k - 1])
            bound = "="
        rows.append({"override.engine": eng, "scheduler": sch, "target": target, "capacity_rps": cap,
                     "bound": bound})
    return pd.DataFrame(rows)


def main() -> None:
    sweep = Path(sys.argv[1])
    table = pd.read_csv(sweep / "summary.csv")
    rate_col = "lambda"
    if table[rate_col].isna().all():        # a trace replay: the load is workload.target_rate
        table[rate_col] = table["override.workload.target_rate"]
    caps = (pd.read_csv(sweep / "capacity.csv") if (sweep / "capacity.csv").exists()
            else grid_capacity(table, rate_col))
    ok = table.groupby(["override.engine", "scheduler", rate_col])["sla_violation_rate"].mean().reset_index()
    good = ok[ok["sla_violation_rate"] <= 0.05].groupby(rate_col)["scheduler"].count()
    n_series = ok.groupby(["override.engine", "scheduler"]).ngroups
    common = [r for r, c in good.items() if c == n_series]
    lam = float(sys.argv[2]) if len(sys.argv) > 2 else (max(common) if common else float(ok[rate_col].min()))
    at = table[table[rate_col] == lam].groupby(["override.engine", "scheduler"])[
        ["ttft_p99_s", "tpot_p99_s", "tbt_mean_s"]].mean()
    c5 = caps[caps["target"] == 0.05].set_index(["override.engine", "scheduler"])
    print(f"| engine | scheduler | capacity @ 5% violations (req/s) | p99 TTFT @ λ = {lam:g} (s) | "
          f"p99 TPOT @ λ = {lam:g} (ms) |")
    print("|---|---|---|---|---|")
    for (eng, sch), row in c5.sort_index().iterrows():
        cap = row["capacity_rps"]
        cap_s = "< grid" if cap != cap else (f"≥ {cap:g}" if row["bound"] == ">=" else f"{cap:.2f}")
        t = at.loc[(eng, sch)] if (eng, sch) in at.index else None
        ttft = f"{t['ttft_p99_s']:.2f}" if t is not None else "n/a"
        if t is None:
            tpot = "n/a"
        elif t["tpot_p99_s"] == t["tpot_p99_s"]:
            tpot = f"{1e3 * t['tpot_p99_s']:.1f}"
        else:                  # run-to-completion metrics have the mean TBT only
            tpot = f"(mean TBT {1e3 * t['tbt_mean_s']:.1f})"
        print(f"| {eng} | {sch} | {cap_s} | {ttft} | {tpot} |")


if __name__ == "__main__":
    main()
