"""Fault injection, config side (issue 15 items 1, 5, 6, 9; issue 16 item 4): what a hostile or
careless user types, run through the real command-line entry point (``fork_cli``).

Every case must end in exactly one line on stderr, ``error: ...`` with the expected text, exit
code 2, no traceback, no hang, no results written (no ``metrics.json``) and no side effect (the
file ``victim.txt`` that some cases aim at is intact). A case marked QUICK runs in the default
test run; the others are ``slow`` (each is a fresh command, ~1-2 s on a busy 2-core machine).
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.faults import fork_cli

REPO = Path(__file__).resolve().parents[2]
VICTIM = b"precious data\n"


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    needle: str                          # must appear in the one error line
    files: dict[str, bytes] = field(default_factory=dict)
    hide: tuple[str, ...] = ()          # modules made unimportable (a missing extra)
    code: int = 2


def case(id: str, args: str | tuple[str, ...], needle: str, **kw) -> Case:
    argv = tuple(args.split()) if isinstance(args, str) else args
    return Case(id, argv, needle, **kw)


# --- item 1: _target_ only from the slot's built-ins and registered entry points ------------------

NOT_SLOT = "not a component of this slot"
TARGETS = [
    case("target-arrivals-copyfile", "workload.arrivals._target_=shutil.copyfile +workload.arrivals.src=/dev/null "
         "+workload.arrivals.dst=victim.txt", f"workload.arrivals._target_: {NOT_SLOT} (got 'shutil.copyfile')"),
    case("target-prompt-open", "workload.prompt._target_=builtins.open +workload.prompt.file=victim.txt "
         "+workload.prompt.mode=w", f"workload.prompt._target_: {NOT_SLOT} (got 'builtins.open')"),
    case("target-scheduler-system", "scheduler._target_=os.system +scheduler.command=true",
         f"scheduler._target_: {NOT_SLOT} (got 'os.system')"),
    case("target-batcher-rmtree", "scheduler.batcher._target_=shutil.rmtree +scheduler.batcher.path=victim.txt",
         f"scheduler.batcher._target_: {NOT_SLOT}"),
    case("target-workload-exec", "workload._target_=builtins.exec", f"workload._target_: {NOT_SLOT}"),
    case("target-output-subprocess", "workload.output._target_=subprocess.run", f"workload.output._target_: {NOT_SLOT}"),
    case("target-latency-remove", "latency_model._target_=os.remove", f"latency_model._target_: {NOT_SLOT}"),
    case("target-predictor-getcwd", "predictor._target_=os.getcwd", f"predictor._target_: {NOT_SLOT}"),
    case("target-gpus-eval", "gpus._target_=builtins.eval", f"gpus._target_: {NOT_SLOT}"),
    case("target-tracking-unlink", "tracking._target_=pathlib.Path.unlink", f"tracking._target_: {NOT_SLOT}"),
    case("target-antigravity-import", "workload.arrivals._target_=antigravity.geohash",
         f"workload.arrivals._target_: {NOT_SLOT} (got 'antigravity.geohash')"),
    case("target-allowed-names-listed", "scheduler.batcher._target_=os.system",
         "allowed: simsched.batchers.FixedBatcher, simsched.batchers.DynamicBatcher; to add your own, register it "
         "in the entry-point group 'simsched.batchers'"),
    # a real component, in the wrong slot
    case("target-lengths-as-arrivals", "workload.arrivals._target_=simsched.workloads.lengths.Fixed",
         f"workload.arrivals._target_: {NOT_SLOT} (got 'simsched.workloads.lengths.Fixed')"),
    case("target-scheduler-as-batcher", "scheduler.batcher._target_=simsched.scheduler.Scheduler",
         f"scheduler.batcher._target_: {NOT_SLOT}"),
    case("target-tracker-as-latency", "latency_model._target_=simsched.tracking.MlflowTracker",
         f"latency_model._target_: {NOT_SLOT}"),
    case("target-latency-as-predictor", "predictor._target_=simsched.latency.Affine", f"predictor._target_: {NOT_SLOT}"),
    case("target-run-function", "workload._target_=simsched.run.run", f"workload._target_: {NOT_SLOT}"),
    # nested components where none belongs
    case("target-nested-extra", "+workload.arrivals.extra._target_=os.system",
         "workload.arrivals.extra._target_: no component may be built here"),
    case("target-nested-dict", ("+scheduler.batcher.inner={_target_: os.system, command: 'true'}",),
         "scheduler.batcher.inner._target_: no component may be built here"),
    case("target-nested-latency", ("+latency_model.extra={_target_: builtins.print}",),
         "latency_model.extra._target_: no component may be built here"),
    case("target-in-args-list", ("+workload.arrivals._args_=[{_target_: os.system, command: 'true'}]",),
         "workload.arrivals._args_.0._target_: no component may be built here"),
    case("target-interpolated", ("workload.arrivals._target_=${oc.env:HOME}",),
         f"workload.arrivals._target_: {NOT_SLOT}"),
    # instantiate's own switches are not keys of any component
    case("target-partial", "+scheduler._partial_=true", "scheduler._partial_: no such key"),
    case("target-recursive", "+workload._recursive_=false", "workload._recursive_: no such key"),
    case("target-convert", "+workload.arrivals._convert_=none", "workload.arrivals._convert_: no such key"),
    # a slot left without a component
    case("target-missing-batcher", "~scheduler.batcher._target_", "scheduler.batcher._target_: is required"),
    case("target-missing-arrivals", "~workload.arrivals._target_", "workload.arrivals._target_: is required"),
    case("target-slot-not-mapping", "workload.arrivals=5", "workload.arrivals: must be a component"),
    case("target-slot-null", "scheduler.batcher=null", "scheduler.batcher: must be a component"),
    # Hydra's own components
    case("target-hydra-callback", "+hydra.callbacks.evil._target_=os.getcwd",
         "hydra.callbacks.evil._target_: Hydra's components cannot be set by _target_"),
    case("target-hydra-callback-dict", ("hydra.callbacks={evil: {_target_: os.getcwd}}",),
         "hydra.callbacks: Hydra's components cannot be set by _target_"),
    case("target-hydra-launcher", "-m hydra.launcher._target_=os.getcwd seed=0,1",
         "hydra.launcher._target_: Hydra's components cannot be set by _target_"),
    case("target-in-a-sweep", "-m workload=poisson workload.arrivals._target_=simsched.workloads.arrivals.Poisson,os.system",
         f"workload.arrivals._target_: {NOT_SLOT} (got 'os.system')"),
]

# --- item 5: every key checked before the run starts ---------------------------------------------

KEYS = [
    case("key-engine-horizon", "+engine.horizon=10", "engine.horizon: no such key; allowed: name, horizon_s, release"),
    case("key-top-sed", "+sed=5", "sed: no such key; allowed: scheduler, workload"),
    case("key-sla-latency", "+sla.latency=1", "sla.latency: no such key; allowed: latency_s, ttft_s, tbt_s"),
    case("key-sla-latency-force", "++sla.latency=1", "sla.latency: no such key"),
    case("key-tracking-none-urii", "tracking=none +tracking.urii=x", "tracking.urii: no such key"),
    case("key-tracking-mlflow-urii", "tracking=mlflow +tracking.urii=x", "tracking.urii: no such key; allowed: uri, "),
    case("key-metrics", "+metrics.warmup=0.2", "metrics.warmup: no such key; allowed: warmup_fraction"),
    case("key-output", "+output.quite=true", "output.quite: no such key"),
    case("key-scheduler", "+scheduler.kbins=2", "scheduler.kbins: no such key; allowed: batcher, name, k_bins"),
    case("key-batcher", "+scheduler.batcher.bmax=3", "scheduler.batcher.bmax: no such key; allowed: b_min, b_max"),
    case("key-static-batcher", "scheduler=static_fifo +scheduler.batcher.b_max=3",
         "scheduler.batcher.b_max: no such key; allowed: batch_size, full_batches_only"),
    case("key-arrivals", "+workload.arrivals.rat=2", "workload.arrivals.rat: no such key; allowed: shape, scale"),
    case("key-prompt", "+workload.prompt.maximun=3", "workload.prompt.maximun: no such key"),
    case("key-output-lengths", "+workload.output.foo=1", "workload.output.foo: no such key"),
    case("key-latency", "+latency_model.alpha=1", "latency_model.alpha: no such key"),
    case("key-oracle-sigma", "+predictor.sigma=0.1", "predictor.sigma: no such key; allowed: name, p_e"),
    case("key-gpus", "+gpus.counts=2", "gpus.counts: no such key; allowed: count"),
    case("key-workload", "+workload.num_request=5", "workload.num_request: no such key"),
    case("key-top-seed2", "+seed2=1", "seed2: no such key"),
    case("key-azure-models", ("workload=azure_trace", f"workload.path={REPO}/data/traces/azure_llm_2023_code_sample.csv",
                              "+workload.models=[ChatGPT]"), "workload.models: no such key"),
    case("key-plain-override", "scheduler.nope=1", "scheduler.nope: no such key; allowed:"),
    case("key-sweep-new-key", "-m +sed=0,1", "sed: no such key"),
    case("key-sweep-engine", "-m +engine.horizon=1,2", "engine.horizon: no such key"),
    case("key-sweep-without-plus", "sweep=compare", "sweep=compare: a named sweep is selected with +sweep=compare"),
]

# --- item 6: values -------------------------------------------------------------------------------

VALUES = [
    case("value-horizon-nan", "engine.horizon_s=nan", "engine.horizon_s: must be finite (got nan)"),
    case("value-horizon-negative", "engine.horizon_s=-5", "engine.horizon_s: must be > 0 (got -5.0)"),
    case("value-horizon-zero", "engine.horizon_s=0", "engine.horizon_s: must be > 0"),
    case("value-horizon-inf", "engine.horizon_s=inf", "engine.horizon_s: must be finite"),
    case("value-horizon-text", "engine.horizon_s=soon", "engine.horizon_s: Value 'soon'"),
    case("value-release", "engine.release=never", "engine.release: unknown value (got 'never'); allowed: batch_end"),
    case("value-seed-negative", "seed=-1", "seed: must be >= 0 (got -1)"),
    case("value-seed-very-negative", "seed=-100000000000000000000", "seed: must be >= 0"),
    case("value-seed-huge", "seed=100000000000000000000000000000", "seed: must be <= 2**53"),
    case("value-seed-float", "seed=1.5", "seed: Value '1.5'"),
    case("value-seed-sweep", "-m seed=0,-1", "seed: must be >= 0 (got -1)"),
    case("value-second-sweep", "-m seed=0,1,2 workload.arrivals.rate=1,-2", "workload.arrivals.rate: must be > 0 (got -2)"),
    case("value-sweep-after-group", "-m scheduler=static_fifo,dynamic_no_bins seed=3,-3",
         "seed: must be >= 0 (got -3)"),
    case("value-workload-seed", "workload.seed=-3", "workload.seed: must be >= 0 (got -3)"),
    case("value-cv-tiny", "workload.arrivals.cv=1e-200", "workload.arrivals.cv: must be in [1e-06, 100]"),
    case("value-cv-huge", "workload.arrivals.cv=1e200", "workload.arrivals.cv: must be in [1e-06, 100]"),
    case("value-cv-zero", "workload.arrivals.cv=0", "workload.arrivals.cv: must be in [1e-06, 100]"),
    case("value-cv-negative", "workload.arrivals.cv=-1", "workload.arrivals.cv: must be in"),
    case("value-cv-nan", "workload.arrivals.cv=nan", "workload.arrivals.cv: must be finite"),
    case("value-cv-inf", "workload.arrivals.cv=inf", "workload.arrivals.cv: must be finite"),
    case("value-rate-tiny", "workload.arrivals.rate=1e-300", "workload.arrivals: 5000 requests at a mean rate"),
    case("value-rate-zero", "workload.arrivals.rate=0", "workload.arrivals.rate: must be > 0"),
    case("value-rate-nan", "workload.arrivals.rate=nan", "workload.arrivals.rate: must be finite"),
    case("value-rate-inf", "workload.arrivals.rate=inf", "workload.arrivals.rate: must be finite"),
    case("value-gamma-shape-tiny", "workload=gamma workload.arrivals.shape=1e-9",
         "workload.arrivals.shape: must be in [0.0001, 1e+12]"),
    case("value-gamma-shape-huge", "workload=gamma workload.arrivals.shape=1e300", "workload.arrivals.shape: must be in"),
    case("value-gamma-scale-zero", "workload=gamma workload.arrivals.scale=0", "workload.arrivals.scale: must be > 0"),
    case("value-gamma-scale-huge", "workload=gamma workload.arrivals.scale=1e300", "workload.arrivals: 5000 requests"),
    case("value-num-requests-huge", "workload.num_requests=10000000000000",
         "workload.num_requests: needs about 2.5 PB of memory (250 B per request), more than this machine's"),
    case("value-num-requests-beyond-int", "workload.num_requests=100000000000000000000",
         "workload.num_requests: must be <= 2**53"),
    case("value-num-requests-zero", "workload.num_requests=0", "workload.num_requests: must be > 0"),
    case("value-num-requests-negative", "workload.num_requests=-5", "workload.num_requests: must be > 0"),
    case("value-num-requests-float", "workload.num_requests=1e3", "workload.num_requests: Value '1000.0' of type 'float' could not be converted to Integer"),
    case("value-onoff-hang", "workload=onoff workload.arrivals.rate_on=1e-9 workload.arrivals.rate_off=0",
         "workload.arrivals: 5000 requests at a mean rate of 4e-10 req/s"),
    case("value-onoff-periods", "workload=onoff workload.arrivals.rate_on=1 workload.arrivals.rate_off=0 "
         "workload.arrivals.mean_on_s=1e-6 workload.arrivals.mean_off_s=1e-6 workload.num_requests=1000",
         "workload.arrivals.rate_on: 1000 requests at 1e-06 arrivals per ON/OFF cycle need"),
    case("value-onoff-rate-off-negative", "workload=onoff workload.arrivals.rate_off=-1",
         "workload.arrivals.rate_off: must be >= 0"),
    case("value-prompt-max-int64", "workload.prompt.maximum=9223372036854775807", "workload.prompt.maximum: must be <= 2**53"),
    case("value-output-max-tokens", "workload.output.maximum=2000000000", "workload.output.maximum: must be in [1, 1e+09]"),
    case("value-replace-component", ("workload.prompt={_target_: simsched.workloads.lengths.Fixed, value: 5}",),
         "workload.prompt.value: no such key"),
    case("value-prompt-max-tokens", "workload.prompt.maximum=1000000001", "workload.prompt.maximum: must be in [1, 1e+09]"),
    case("value-gpus-zero", "gpus.count=0", "gpus.count: must be > 0"),
    case("value-gpus-huge", "gpus.count=1000000000000", "gpus.count: must be in [1, 1e+06]"),
    case("value-kv-negative", "gpus.kv_capacity_tokens=-1", "gpus.kv_capacity_tokens: must be > 0"),
    case("value-kv-huge", "gpus.kv_capacity_tokens=100000000000000000000", "gpus.kv_capacity_tokens: must be <= 2**53"),
    case("value-kbins-huge", "scheduler.k_bins=100000", "scheduler.k_bins: must be in [1, 4096]"),
    case("value-kbins-zero", "scheduler.k_bins=0", "scheduler.k_bins: must be > 0"),
    case("value-window-huge", "scheduler.batcher.window=100000000000000000000", "scheduler.batcher.window: must be <= 2**53"),
    case("value-bmax-huge", "scheduler.batcher.b_max=100000000000000000000", "scheduler.batcher.b_max: must be <= 2**53"),
    case("value-boundaries", "scheduler.boundaries=[300,100,200]", "scheduler.boundaries: cut points must be finite"),
    case("value-sla-nan", "sla.latency_s=nan", "sla.latency_s: must be finite"),
    case("value-sla-negative", "sla.latency_s=-1", "sla.latency_s: must be > 0"),
    case("value-sla-tbt-zero", "sla.tbt_s=0", "sla.tbt_s: must be > 0"),
    case("value-warmup-one", "metrics.warmup_fraction=1", "metrics.warmup_fraction: must be in [0, 1)"),
    case("value-warmup-negative", "metrics.warmup_fraction=-0.1", "metrics.warmup_fraction: must be in [0, 1)"),
    case("value-noisy-pe", "predictor=noisy predictor.p_e=0.7", "predictor.p_e: must be <= 0.5"),
    case("value-noisy-sigma", "predictor=noisy predictor.sigma=-1", "predictor.sigma: must be >= 0"),
    case("value-beta-inf", "latency_model.beta_s=inf", "latency_model.beta_s: must be finite"),
    case("value-trace-rps-scale-tiny", ("workload=azure_trace",
                                        f"workload.path={REPO}/data/traces/azure_llm_2023_code_sample.csv",
                                        "workload.rps_scale=1e-300", "workload.cache_dir=null"),
         "workload.rps_scale: stretches the trace's"),
    case("value-trace-target-rate-tiny", ("workload=azure_trace",
                                          f"workload.path={REPO}/data/traces/azure_llm_2023_code_sample.csv",
                                          "workload.target_rate=1e-300", "workload.cache_dir=null"),
         "workload.target_rate: stretches the trace's"),
]

# --- numbers of the wrong type --------------------------------------------------------------------

TYPES = [
    case("type-kbins-word", "scheduler.k_bins=two", "scheduler.k_bins: Value 'two'"),
    case("type-kbins-float", "scheduler.k_bins=1.5", "scheduler.k_bins: Value '1.5'"),
    case("type-sla-word", "sla.latency_s=fast", "sla.latency_s: Value 'fast'"),
    case("type-plots-word", "output.plots=maybe", "output.plots: Value 'maybe'"),
    case("type-rate-list", "workload.arrivals.rate=[1,2]", "workload.arrivals.rate"),
    case("type-count-bool", "gpus.count=true", "gpus.count"),
]

# --- item 9: traces, every error with file, line and column --------------------------------------

H6 = b"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
OK6 = b"0,ChatGPT,10,3,13,API log\n"
HA = b"TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
OKA = b"2023-11-16 18:17:03.9799600,4,1\r\n"


def bgpt(id: str, body: bytes, needle: str) -> Case:
    return Case(id, ("workload=burstgpt_trace", "workload.path=t.csv", "workload.cache_dir=null"),
                needle, files={"t.csv": H6 + OK6 + body})


def azure(id: str, body: bytes, needle: str, head: bytes = HA + OKA) -> Case:
    return Case(id, ("workload=azure_trace", "workload.path=a.csv", "workload.cache_dir=null"),
                needle, files={"a.csv": head + body})


TRACES = [
    azure("trace-zone-utc", b"2023-11-16 18:17:04.1+00:00,4,1\r\n",
          "a.csv:3 column 'TIMESTAMP': timestamp has a time zone: '2023-11-16 18:17:04.1+00:00'"),
    azure("trace-zone-z", b"2023-11-16T18:17:04Z,4,1\r\n", "a.csv:3 column 'TIMESTAMP': timestamp has a time zone"),
    azure("trace-zone-first-row", b"", "a.csv:2 column 'TIMESTAMP': timestamp has a time zone",
          head=HA + b"2023-11-16 18:17:03-05:00,4,1\r\n"),
    azure("trace-zone-compact", b"2023-11-16 18:17:04+0530,4,1\r\n", "a.csv:3 column 'TIMESTAMP': timestamp has a time zone"),
    azure("trace-year-1500", b"1500-11-16 18:17:04,4,1\r\n", "a.csv:3 column 'TIMESTAMP': timestamp is outside the years"),
    azure("trace-year-2300", b"2300-01-01 00:00:00,4,1\r\n", "a.csv:3 column 'TIMESTAMP': timestamp is outside the years"),
    azure("trace-not-datetime", b"yesterday,4,1\r\n", "a.csv:3 column 'TIMESTAMP': timestamp is not a datetime"),
    azure("trace-azure-latin1-time", b"2023-11-16 18:17:04\xe9,4,1\r\n", "a.csv:3 column 'TIMESTAMP': not UTF-8 text"),
    azure("trace-azure-above-int64", b"2023-11-16 18:17:04,99999999999999999999,1\r\n",
          "a.csv:3 column 'ContextTokens': token count must be <= 1,000,000,000"),
    azure("trace-azure-near-int64", b"2023-11-16 18:17:04,4,9223372036854775800\r\n",
          "a.csv:3 column 'GeneratedTokens': token count must be <= 1,000,000,000"),
    bgpt("trace-above-int64-prompt", b"1,ChatGPT,99999999999999999999,3,13,API log\n",
         "t.csv:3 column 'Request tokens': token count must be <= 1,000,000,000 (got 99999999999999999999)"),
    bgpt("trace-above-int64-total", b"1,ChatGPT,10,3,99999999999999999999,API log\n",
         "t.csv:3 column 'Total tokens': token count must be <="),
    bgpt("trace-below-int64", b"1,ChatGPT,-99999999999999999999,3,13,API log\n",
         "t.csv:3 column 'Request tokens': token count must be >= 0"),
    bgpt("trace-near-int64-wrap", b"1,ChatGPT,9223372036854775800,3000,13,API log\n",
         "t.csv:3 column 'Request tokens': token count must be <= 1,000,000,000 (got 9223372036854775800)"),
    bgpt("trace-ten-billion", b"1,ChatGPT,10,10000000000,13,API log\n",
         "t.csv:3 column 'Response tokens': token count must be <= 1,000,000,000"),
    bgpt("trace-latin1-model", b"1,Chat\xe9GPT,10,3,13,API log\n", "t.csv:3 column 'Model': not UTF-8 text (byte 0xe9"),
    bgpt("trace-latin1-logtype", b"1,ChatGPT,10,3,13,API l\xf6g\n", "t.csv:3 column 'Log Type': not UTF-8 text"),
    bgpt("trace-latin1-late", OK6 * 50 + b"9,ChatGPT,10,3,13,\xc0PI log\n", "t.csv:53 column 'Log Type': not UTF-8"),
    Case("trace-latin1-header", ("workload=burstgpt_trace", "workload.path=h.csv"),
         "h.csv:1: not UTF-8 text", files={"h.csv": b"Timestamp,Mod\xe8l,Request tokens\n" + OK6}),
    Case("trace-utf16", ("workload=burstgpt_trace", "workload.path=u.csv"), "u.csv:1: not UTF-8 text",
         files={"u.csv": H6.decode().encode("utf-16")}),
    bgpt("trace-nan-time", b"nan,ChatGPT,10,3,13,API log\n", "t.csv:3 column 'Timestamp': missing value"),
    bgpt("trace-inf-time", b"1e400,ChatGPT,10,3,13,API log\n", "t.csv:3 column 'Timestamp': timestamp must be a finite"),
    bgpt("trace-word-time", b"noon,ChatGPT,10,3,13,API log\n", "t.csv:3 column 'Timestamp': timestamp is not a number"),
    bgpt("trace-float-count", b"1,ChatGPT,10.5,3,13,API log\n", "t.csv:3 column 'Request tokens': token count is not an integer"),
    bgpt("trace-exponent-count", b"1,ChatGPT,1e3,3,13,API log\n", "t.csv:3 column 'Request tokens': token count is not an integer"),
    bgpt("trace-missing-count", b"1,ChatGPT,,3,13,API log\n", "t.csv:3 column 'Request tokens': missing value"),
    bgpt("trace-extra-field", b"1,ChatGPT,10,3,13,API log,x\n", "t.csv:3: expected 6 fields, found 7"),
    bgpt("trace-short-row", b"1,ChatGPT,10\n", "t.csv:3: expected 6 fields, found 3"),
    bgpt("trace-goes-back", b"9,ChatGPT,10,3,13,API log\n5,ChatGPT,10,3,13,API log\n",
         "t.csv:4 column 'Timestamp': timestamp goes back 4 s"),
    Case("trace-wrong-header", ("workload=burstgpt_trace", "workload.path=w.csv"),
         "w.csv:1: unknown trace schema: found columns [time,prompt,output]", files={"w.csv": b"time,prompt,output\n1,2,3\n"}),
    Case("trace-empty-file", ("workload=burstgpt_trace", "workload.path=e.csv"), "e.csv:1: empty file",
         files={"e.csv": b""}),
    Case("trace-header-only", ("workload=burstgpt_trace", "workload.path=o.csv", "workload.cache_dir=null"),
         "o.csv:2: no data rows", files={"o.csv": H6}),
    Case("trace-binary", ("workload=burstgpt_trace", "workload.path=b.csv"), "b.csv:1: not UTF-8 text",
         files={"b.csv": bytes(range(128, 256)) * 4}),
    Case("trace-missing-file", ("workload=azure_trace", "workload.path=nope.csv"), "nope.csv: no such file"),
    Case("trace-directory", ("workload=azure_trace", "workload.path=."), ".: not a file"),
    Case("trace-path-missing", ("workload=azure_trace",), "workload.path: is required"),
]

# --- issue 16 item 4: launchers without their extra ----------------------------------------------

LAUNCHERS = [
    case("launcher-joblib-missing", "-m hydra/launcher=joblib seed=0,1",
         "hydra/launcher=joblib: needs the 'joblib' extra (hydra_plugins.hydra_joblib_launcher is not installed); "
         "install it with: pip install 'simsched[joblib]'", hide=("hydra_plugins.hydra_joblib_launcher",)),
    case("launcher-ray-missing", "-m hydra/launcher=ray_local seed=0,1",
         "hydra/launcher=ray_local: needs the 'ray' extra (ray is not installed); install it with: "
         "pip install 'simsched[ray]'", hide=("ray",)),
    case("launcher-ray-plugin-missing", "-m hydra/launcher=ray_local seed=0,1", "pip install 'simsched[ray]'",
         hide=("hydra_plugins.hydra_ray_launcher",)),
    case("launcher-slurm-missing", "-m hydra/launcher=slurm seed=0,1", "pip install 'simsched[slurm]'",
         hide=("hydra_plugins.hydra_submitit_launcher",)),
    case("launcher-single-run", "hydra/launcher=joblib", "pip install 'simsched[joblib]'",
         hide=("hydra_plugins.hydra_joblib_launcher",)),
    case("launcher-unknown", "-m hydra/launcher=nope seed=0,1", "hydra/launcher=nope: unknown option; allowed: basic"),
]

CASES = TARGETS + KEYS + VALUES + TYPES + TRACES + LAUNCHERS
# One or two per kind run in the default test run; CI runs them all.
QUICK = {"target-arrivals-copyfile", "target-nested-dict", "target-hydra-callback", "key-sla-latency",
         "key-tracking-none-urii", "value-horizon-nan", "value-num-requests-huge", "value-onoff-hang",
         "trace-zone-utc", "trace-near-int64-wrap", "trace-latin1-model", "launcher-joblib-missing",
         "value-second-sweep"}


def test_the_table_is_large_and_unique():
    assert len({c.id for c in CASES}) == len(CASES) >= 110
    assert QUICK <= {c.id for c in CASES}


@pytest.fixture(scope="module", autouse=True)
def _warm():
    fork_cli.warm_up()


@pytest.mark.parametrize("c", [pytest.param(c, id=c.id, marks=() if c.id in QUICK else pytest.mark.slow)
                               for c in CASES])
def test_fault_is_one_line_exit_2_and_harmless(c: Case, tmp_path):
    (tmp_path / "victim.txt").write_bytes(VICTIM)
    for name, data in c.files.items():
        (tmp_path / name).write_bytes(data)
    argv = [a for a in c.argv if a in ("-m", "--multirun")] + ["tracking=none", "output.plots=false"] \
        + [a for a in c.argv if a not in ("-m", "--multirun")]
    res = fork_cli.run(argv, tmp_path, hide=c.hide, timeout=120)
    assert not res.hung, f"hung: {c.argv}"
    assert "Traceback" not in res.stderr, res.stderr
    assert res.code == c.code, res.stderr
    assert len(res.lines) == 1 and res.lines[0].startswith("error: "), res.stderr
    assert c.needle in res.lines[0], res.lines[0]
    assert not list(tmp_path.rglob("metrics.json")), "a failed command wrote results"
    assert (tmp_path / "victim.txt").read_bytes() == VICTIM, "the config touched a file"


@pytest.mark.parametrize("c", [c for c in CASES if c.id in ("target-arrivals-copyfile", "key-sla-latency",
                                                          "value-seed-negative", "trace-latin1-model")], ids=lambda c: c.id)
def test_the_fork_runner_matches_a_real_process(c: Case, tmp_path):
    """The same case as ``python -m simsched`` in a fresh interpreter: same exit code, same stderr."""
    for name, data in c.files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "victim.txt").write_bytes(VICTIM)
    argv = ["tracking=none", "output.plots=false", *c.argv]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    real = subprocess.run([sys.executable, "-m", "simsched", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    forked = fork_cli.run(argv, tmp_path)
    assert (forked.code, forked.stderr) == (real.returncode, real.stderr)
