"""Mutation harness: known simulator bugs (REFERENCE §7, issue 14), re-introduced one at a time;
each must make a fast subset of the test suite fail.

A mutant is (file, exact original snippet, replacement). The snippet must occur exactly once in
its file, so a change to the code that moves or rewrites it breaks the harness loudly
(``test_every_mutant_applies_to_the_current_code`` runs in the default test run) instead of
letting a mutant silently stop testing anything.

Each mutant runs in a copy of the source tree (``simsched/`` with ``conf/`` and ``sweeps/`` inside
it, ``tests/``, ``pyproject.toml``) that comes first on ``PYTHONPATH``; the working tree is never
modified. Compiled loops are off (``SIMSCHED_JIT=0``): the same source runs as plain Python, so a
mutant in a kernel is exercised without paying a compilation per mutant.

    python tests/mutation.py                  # every mutant, then the score
    python tests/mutation.py --only feedback_constant,window_ignored --jobs 2
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINE = "simsched/engines/run_to_completion.py"   # simulate, check_conservation
LOOP = "simsched/engines/rtc_loop.py"               # serve: the event loop (also compiled)

# The fast subset the mutants must fail: controller, engine, bins, metrics, reference engine,
# properties, reduced validation checks (in this order: cheap, targeted files first).
SUBSET = [
    "tests/test_batchers.py",
    "tests/test_sla_binding.py",
    "tests/test_engine.py",
    "tests/test_metrics.py",
    "tests/test_reference.py",
    "tests/test_properties.py",
    "tests/test_validation.py",
]


class MutantOutOfDate(Exception):
    """A mutant's snippet is no longer in its file (exactly once): update the harness."""


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    original: str
    replacement: str
    why: str


MUTANTS = [
    Mutant("feedback_constant", LOOP,
           "sla_observe(sla, k, b, b_tbt[bid])", "sla_observe(sla, k, b, 0.03)",
           "Algorithm 2 fed a constant 30 ms instead of the observed TBT (REFERENCE §7)"),
    Mutant("feedback_model_computed", LOOP,
           "sla_observe(sla, k, b, b_tbt[bid])",
           "sla_observe(sla, k, b, form_time(lat_kind, lat_coefs, b, 2, 0.0) - form_time(lat_kind, lat_coefs, b, 1, 0.0))",
           "Algorithm 2 fed the model's context-free step time of b, not the batch's observed TBT"),
    Mutant("batch_time_mean_member", LOOP,
           "return longest, prompt_sum, output_sum", "return output_sum // (hi - lo), prompt_sum, output_sum",
           "a batch lasts as long as its mean member instead of its longest"),
    Mutant("batch_time_first_member", LOOP,
           "return longest, prompt_sum, output_sum", "return output[members[lo]], prompt_sum, output_sum",
           "a batch lasts as long as its first member instead of its longest"),
    Mutant("bin_boundaries_shifted", "simsched/scheduler.py",
           "np.quantile(sample.astype(float), np.arange(1, k) / k)",
           "np.quantile(sample.astype(float), np.arange(1, k) / (k + 1))",
           "cut points at the i/(K+1) quantiles: bins no longer of equal mass"),
    Mutant("bin_boundary_ties_to_lower_bin", "simsched/scheduler.py",
           'bins = np.searchsorted(cuts, predicted, side="right").astype(np.int32)',
           'bins = np.searchsorted(cuts, predicted, side="left").astype(np.int32)',
           "a prediction equal to a cut point goes to the lower bin (boundaries shifted by one token)"),
    Mutant("bins_look_ahead", "simsched/scheduler.py",
           "if self.boundaries is None and int(self.k_bins) > 1:", "if False:",
           "warm-up requests binned by cut points from requests that have not arrived yet"),
    # The bin's waiting requests (members[lo:arrived]) re-ordered by prediction before each batch
    # is taken (stable: ties keep arrival order); numba compiles it too.
    Mutant("fifo_broken_inside_bin", LOOP,
           "                lo = first[k] + heads[k]\n",
           "                lo = first[k] + heads[k]\n"
           "                seg = members[lo:first[k] + arrived[k]].copy()\n"
           "                keys = np.empty(len(seg))\n"
           "                for j in range(len(seg)):\n"
           "                    keys[j] = predicted[seg[j]]\n"
           "                members[lo:first[k] + arrived[k]] = seg[np.argsort(keys, kind=\"mergesort\")]\n",
           "inside a bin, requests served shortest predicted first instead of in arrival order"),
    # Until a bin's first completion Algorithm 1 reads the output sums of its arrived requests.
    Mutant("memory_fed_true_lengths", LOOP,
           "q = float(predicted[row])", "q = float(output[row])",
           "Algorithm 1 estimates from the true outputs of queued requests (REFERENCE §7)"),
    # The window is the ring buffer's length: 2^16 observations stand for all of history.
    Mutant("window_ignored", "simsched/batchers.py",
           "w = max(int(p.window), 1)", "w = 1 << 16",
           "τ̄ and b̄ averaged over all history instead of the last `window` batches"),
    Mutant("window_last_only", "simsched/batchers.py",
           "w = max(int(p.window), 1)", "w = 1",
           "τ̄ and b̄ from the last batch only"),
    Mutant("conservation_check_skipped", ENGINE,
           "    check_conservation(res)\n    return res", "    return res",
           "the end-of-run conservation check is never called"),
    Mutant("conservation_check_weakened", ENGINE,
           "if np.any(start < res.requests.arrival[rows][done]) or np.any(finish < start):",
           "if False:",
           "the conservation check no longer checks start >= arrival and finish >= start"),
    Mutant("arrival_before_completion_on_ties", LOOP,
           "if t_fin <= t_arr:", "if t_fin < t_arr:",
           "an arrival at the instant a batch completes is handled first (tie order broken)"),
    Mutant("round_robin_restarts_at_bin_0", LOOP,
           "rr = k + 1", "rr = 0",
           "round robin always starts from the first bin (long bins wait)"),
    Mutant("unfinished_not_violations", "simsched/metrics.py",
           "violates = late | unfinished", "violates = late",
           "an unfinished request only violates once it is known late: a cut-off run looks better"),
    Mutant("unfinished_dropped", "simsched/metrics.py",
           "measured = (done | (res.status == UNFINISHED)) & in_window", "measured = done & in_window",
           "unfinished requests left out of every metric (issue 14 item 4)"),
    Mutant("saturation_not_backlogged", "simsched/saturation.py",
           "backlog = RequestTable(np.zeros(len(rows)), ", "backlog = RequestTable(requests.arrival[rows], ",
           "μ_sat measured on the run's own arrivals instead of a backlog: ρ no longer a stability line"),
]


def check_mutant(m: Mutant, root: Path = REPO) -> str:
    """The file's text with the mutant applied; MutantOutOfDate unless the snippet occurs once."""
    path = root / m.path
    text = path.read_text()
    count = text.count(m.original)
    if count != 1:
        raise MutantOutOfDate(f"mutant {m.name}: its snippet occurs {count} times in {m.path} (expected "
                              f"exactly once); update tests/mutation.py with the code:\n{m.original}")
    mutated = text.replace(m.original, m.replacement)
    compile(mutated, str(path), "exec")
    return mutated


def copy_tree(dest: Path) -> Path:
    """A copy of what the tests import, with the config tree inside the package."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    shutil.copytree(REPO / "simsched", dest / "simsched", ignore=skip)
    shutil.copytree(REPO / "conf", dest / "simsched" / "conf", ignore=skip, dirs_exist_ok=True)
    shutil.copytree(REPO / "sweeps", dest / "simsched" / "sweeps", ignore=skip, dirs_exist_ok=True)
    shutil.copytree(REPO / "tests", dest / "tests", ignore=skip)
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _env(root: Path) -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(root), "SIMSCHED_JIT": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
                         "PYTHONDONTWRITEBYTECODE": "1"}


def run_suite(root: Path, timeout_s: float) -> tuple[str, str, float]:
    """(outcome, first failing test, seconds): outcome ``passed``, ``failed`` or ``timeout``."""
    probe = subprocess.run([sys.executable, "-c", "import simsched; print(simsched.__file__)"], cwd=root,
                           env=_env(root), capture_output=True, text=True, timeout=120)
    if not probe.stdout.strip().startswith(str(root)):
        raise RuntimeError(f"the copy does not shadow the installed simsched: {probe.stdout}{probe.stderr}")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
           "--no-header", *SUBSET]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.perf_counter() - t0
    wall = time.perf_counter() - t0
    if proc.returncode == 0:
        return "passed", "", wall
    if proc.returncode == 1:
        failed = re.search(r"^FAILED (.+?)(?: - |$)", proc.stdout, re.M)
        return "failed", failed.group(1) if failed else "?", wall
    raise RuntimeError(f"pytest could not run the suite (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    killed: bool
    detail: str
    seconds: float


def run_mutant(m: Mutant, workdir: Path, timeout_s: float = 600.0) -> Outcome:
    root = copy_tree(workdir / m.name)
    (root / m.path).write_text(check_mutant(m))
    outcome, test, wall = run_suite(root, timeout_s)
    killed = outcome != "passed"
    detail = f"killed by {test}" if outcome == "failed" else "killed (timeout)" if killed else "SURVIVED"
    shutil.rmtree(root, ignore_errors=True)
    return Outcome(m, killed, detail, wall)


def run_all(workdir: Path, mutants: list[Mutant] = MUTANTS, jobs: int = 1,
            timeout_s: float = 600.0) -> tuple[float, list[Outcome]]:
    """The unmutated suite must pass in a copy first (else a "kill" means nothing); then every
    mutant. Returns (seconds of the clean run, outcomes)."""
    for m in mutants:
        check_mutant(m)
    clean = copy_tree(workdir / "_clean")
    outcome, test, clean_s = run_suite(clean, timeout_s)
    if outcome != "passed":
        raise RuntimeError(f"the unmutated suite does not pass in a copy ({outcome}: {test})")
    shutil.rmtree(clean, ignore_errors=True)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        outcomes = list(pool.map(lambda m: run_mutant(m, workdir, timeout_s), mutants))
    return clean_s, outcomes


def format_outcomes(clean_s: float, outcomes: list[Outcome]) -> str:
    killed = sum(o.killed for o in outcomes)
    width = max(len(o.mutant.name) for o in outcomes)
    lines = [f"clean suite passed in a copy ({clean_s:.0f} s)"]
    lines += [f"  {o.mutant.name.ljust(width)}  {o.seconds:6.1f} s  {o.detail}" for o in outcomes]
    lines.append(f"mutation score: {killed}/{len(outcomes)} killed ({killed / len(outcomes):.0%})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated mutant names (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at once")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name}  ({m.path}): {m.why}")
        return 0
    names = {n for n in args.only.split(",") if n}
    unknown = names - {m.name for m in MUTANTS}
    if unknown:
        print(f"error: --only: unknown mutant {sorted(unknown)[0]}", file=sys.stderr)
        return 2
    chosen = [m for m in MUTANTS if not names or m.name in names]
    with tempfile.TemporaryDirectory(prefix="simsched-mutants-") as tmp:
        clean_s, outcomes = run_all(Path(tmp), chosen, args.jobs)
    print(format_outcomes(clean_s, outcomes))
    return 0 if all(o.killed for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
