"""Profiler v2 (issue 17 item 1): time single forward steps of a transformers causal LM, prefill
apart from decode, so that a sample is GPU time for a known amount of work.

- **Shapes.** A prefill step computes ``new_tokens`` prompt tokens of ``batch_size`` sequences
  from position 0; a decode step computes one token per sequence attending over
  ``context_len`` tokens. Each shape has its own static KV cache exactly ``context_len`` long
  (transformers' ``StaticCache``; a static cache attends over its whole length, so its length
  *is* the context); its write position is pinned before every step, so the same step can be
  replayed. Token ids are random; weights are random (timing does not depend on values).
- **CUDA graphs.** On CUDA each shape's step is captured once as a CUDA graph and replayed
  (``graphs: auto``), so a step costs the GPU's time, not Python's launch overhead. This is
  the "equivalent" of ``torch.compile(mode="reduce-overhead")``, which would recompile for every
  shape. If capture fails the run falls back to eager steps and records why. CPU and MPS are
  always eager.
- **Timing.** CUDA events around every step on CUDA; elsewhere ``perf_counter`` between device
  synchronisations. A device warm-up of ``warmup_s`` comes first; each shape then runs one
  untimed trial (all its steps), then ``trials`` timed trials of ``steps`` steps each.
- **Output.** Every sample (``phase, batch_size, new_tokens, context_len, trial, step, seconds,
  graphs, timer``) in ``steps_<device>_<model>.parquet`` (CSV where pyarrow is missing; the fit
  converts it) and the environment in ``.json`` (GPU, driver, CUDA, torch, transformers, dtype,
  graphs used, spec, shapes skipped). Both are rewritten after each shape.

Needs only torch, transformers and the standard library (plus ``simsched.errors``), so it runs
on a bare GPU machine.
"""
from __future__ import annotations

import csv
import gc
import inspect
import json
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import transformers

from calibrate.presets import PRESETS, build_model, check_model, has_weights, model_config
from simsched.errors import ConfigError, SimschedError, check_positive

SAMPLE_FIELDS = ("phase", "batch_size", "new_tokens", "context_len", "trial", "step", "seconds", "graphs", "timer")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GRAPHS = ("auto", "on", "off")
METHOD = ("profiler v2: single forward steps of the causal LM with a static KV cache as long as the step's "
          "context (write position pinned before each step); prefill = new_tokens prompt tokens from position 0, "
          "decode = 1 token attending over context_len tokens; logits for the last token only; CUDA graphs per "
          "shape on CUDA (graphs column), CUDA events per step (else perf_counter between synchronisations); "
          "device warm-up, then per shape one untimed trial and `trials` timed trials of `steps` steps; "
          "random weights and token ids")


def _ints(key: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(key, "must be a non-empty list of positive integers", values)
    for v in values:
        check_positive(key, v, integer=True)
    return tuple(sorted({int(v) for v in values}))


@dataclass(frozen=True)
class ProfileSpec:
    """What to measure. ``device: auto`` is cuda when available, else cpu; ``dtype: auto`` is
    bfloat16 on a GPU and float32 on the CPU. Prefill shapes are ``prefill_batch_sizes`` ×
    ``prefill_lens`` up to ``max_prefill_tokens`` tokens a step; decode shapes are
    ``decode_batch_sizes`` × ``decode_contexts``. ``budget_s`` stops starting new shapes once
    the next would likely overrun it (those skipped are listed in the JSON). ``threads`` sets
    torch's CPU threads."""

    model: str = "tiny"
    device: str = "auto"
    dtype: str = "auto"
    prefill_batch_sizes: tuple[int, ...] = (1, 8, 32)
    prefill_lens: tuple[int, ...] = (128, 512, 1024, 2048)
    max_prefill_tokens: int = 32768
    decode_batch_sizes: tuple[int, ...] = (1, 8, 32, 64, 128, 256)
    decode_contexts: tuple[int, ...] = (128, 512, 1024, 2048)
    trials: int = 5
    prefill_steps: int = 2
    decode_steps: int = 8
    warmup_s: float = 1.0
    graphs: str = "auto"
    seed: int = 0
    budget_s: float | None = None
    threads: int | None = None
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        check_model(str(self.model))
        for key in ("prefill_batch_sizes", "prefill_lens", "decode_batch_sizes", "decode_contexts"):
            object.__setattr__(self, key, _ints(key, getattr(self, key)))
        for key in ("max_prefill_tokens", "trials", "prefill_steps", "decode_steps"):
            check_positive(key, getattr(self, key), integer=True)
        check_positive("warmup_s", self.warmup_s, allow_zero=True)
        check_positive("seed", self.seed, integer=True, allow_zero=True)
        if self.budget_s is not None:
            check_positive("budget_s", self.budget_s)
        if self.threads is not None:
            check_positive("threads", self.threads, integer=True)
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError("dtype", "unknown dtype", self.dtype, "auto, " + ", ".join(DTYPES))
        if self.graphs not in GRAPHS:
            raise ConfigError("graphs", "unknown value", self.graphs, ", ".join(GRAPHS))
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(self.device)):
            raise ConfigError("device", "unknown device", self.device, "auto, cpu, cuda, cuda:N, mps")
        if not self.shapes():
            raise ConfigError("max_prefill_tokens", "leaves no shape to measure", self.max_prefill_tokens)

    def shapes(self) -> list[tuple[str, int, int, int]]:
        """(phase, batch_size, new_tokens, context_len): prefills first, then decodes."""
        pre = [("prefill", b, p, p) for b in self.prefill_batch_sizes for p in self.prefill_lens
               if b * p <= self.max_prefill_tokens]
        return pre + [("decode", b, 1, c) for b in self.decode_batch_sizes for c in self.decode_contexts]


def resolve_device(name: str) -> torch.device:
    """The torch device for a spec's device name; ConfigError if it is not on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA is not available on this machine", name, "auto, cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError("device", f"only {torch.cuda.device_count()} CUDA device(s) here", name)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device", "MPS is not available on this machine", name, "auto, cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return DTYPES[name]


def synchroniser(device: torch.device) -> Callable[[], None]:
    """Wait for the device's queued work, so that a host timestamp means 'this step is done'."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return "CPU " + line.split(":", 1)[1].strip()
        except OSError:
            pass
        return f"CPU {platform.machine()}"
    return device.type


def driver_version(device: torch.device) -> str | None:
    """The NVIDIA driver, from nvidia-smi when it is there (None otherwise)."""
    if device.type != "cuda":
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def slug(text: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]+", "_", text.lower())).strip("_")


def samples_stem(device_label: str, model: str) -> str:
    """File stem naming the hardware and the model, e.g. steps_nvidia_h200_qwen2_5_1_5b."""
    return f"steps_{slug(device_label)}_{slug(Path(model).name if model not in PRESETS else model)}"


def make_cache(model: Any, context_len: int, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
    """A StaticCache of ``context_len`` tokens, built with what this transformers version takes."""
    from transformers import StaticCache

    params = inspect.signature(StaticCache.__init__).parameters
    offer = {"config": model.config, "max_cache_len": context_len, "max_batch_size": batch_size,
             "device": device, "dtype": dtype}
    return StaticCache(**{k: v for k, v in offer.items() if k in params})


def forward_kwargs(model: Any, cache: Any, start: int, n: int, device: torch.device) -> dict[str, Any]:
    """The forward arguments that place ``n`` new tokens at ``start`` in ``cache``, for the
    transformers API at hand (``cache`` or ``past_key_values``; ``cache_position`` where taken)."""
    outer = inspect.signature(model.forward).parameters
    inner = inspect.signature(model.base_model.forward).parameters
    kw: dict[str, Any] = {"use_cache": True}
    kw["cache" if "cache" in inner else "past_key_values"] = cache
    if "cache_position" in inner or "cache_position" in outer:
        kw["cache_position"] = torch.arange(start, start + n, device=device)
    if "logits_to_keep" in outer:
        kw["logits_to_keep"] = 1
    return kw


def pin_position(cache: Any, start: int, has_cache_position: bool) -> Callable[[], None]:
    """A function that resets the cache's write position to ``start`` (a replayed step must
    write the same slots); the cache_position argument does it where the API takes one."""
    counters = [layer.cumulative_length for layer in getattr(cache, "layers", [])
                if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor)]
    if not counters and not has_cache_position:
        raise SimschedError(f"profiler v2 cannot pin the static cache's write position with transformers "
                            f"{transformers.__version__} (no cumulative_length, no cache_position)")

    def reset() -> None:
        for layer in getattr(cache, "layers", []):
            counter = getattr(layer, "cumulative_length", None)
            if isinstance(counter, torch.Tensor):
                counter.fill_(start)
    return reset


@dataclass
class Shape:
    """One shape's step, eager or as a CUDA graph."""

    phase: str
    batch_size: int
    new_tokens: int
    context_len: int
    step: Callable[[], None]
    prepare: Callable[[], None]
    graphs: bool
    keep: list[Any] = field(default_factory=list)  # objects the step needs alive (cache, graph)


def build_shape(model: Any, phase: str, b: int, n: int, ctx: int, device: torch.device, dtype: torch.dtype,
                ids_gen: torch.Generator, use_graphs: bool) -> Shape:
    start = ctx - n
    cache = make_cache(model, ctx, b, device, dtype)
    ids = torch.randint(0, int(model.config.vocab_size), (b, n), generator=ids_gen).to(device)
    pos = torch.arange(start, ctx, device=device).unsqueeze(0).expand(b, n).contiguous()
    kw = forward_kwargs(model, cache, start, n, device)
    reset = pin_position(cache, start, "cache_position" in kw)

    def forward() -> None:
        model(input_ids=ids, position_ids=pos, **kw)

    with torch.inference_mode():
        reset()
        forward()  # allocates the cache (lazily, in current transformers)
    layers = getattr(cache, "layers", [])
    if layers and getattr(layers[0], "keys", None) is not None and layers[0].keys.shape[-2] != ctx:
        raise SimschedError(f"static cache holds {layers[0].keys.shape[-2]} tokens, expected {ctx}")
    if not use_graphs:
        return Shape(phase, b, n, ctx, forward, reset, False, [cache, ids, pos])
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.inference_mode():
        with torch.cuda.stream(side):
            for _ in range(2):
                reset()
                forward()
        torch.cuda.current_stream(device).wait_stream(side)

        def captured() -> None:
            reset()
            forward()

        with torch.cuda.graph(graph):
            captured()
    return Shape(phase, b, n, ctx, graph.replay, lambda: None, True, [cache, ids, pos, graph])


def time_steps(shape: Shape, count: int, device: torch.device) -> list[float]:
    """Seconds of ``count`` consecutive steps: CUDA events on CUDA, else perf_counter between
    synchronisations. The position reset of an eager step is outside the timed span."""
    with torch.inference_mode():
        if device.type == "cuda":
            events = []
            for _ in range(count):
                shape.prepare()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                shape.step()
                end.record()
                events.append((start, end))
            torch.cuda.synchronize(device)
            return [s.elapsed_time(e) / 1e3 for s, e in events]
        sync = synchroniser(device)
        out = []
        for _ in range(count):
            shape.prepare()
            sync()
            t0 = time.perf_counter()
            shape.step()
            sync()
            out.append(time.perf_counter() - t0)
        return out


def write_samples(path_stem: Path, rows: list[dict[str, Any]]) -> Path:
    """Parquet where pyarrow is installed, else CSV (the fit reads both); written atomically."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path = path_stem.with_suffix(".csv")
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=SAMPLE_FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})
        tmp.replace(path)
        return path
    path = path_stem.with_suffix(".parquet")
    tmp = path.with_name(path.name + ".tmp")
    table = pa.table({k: [r[k] for r in rows] for k in SAMPLE_FIELDS}) if rows else pa.table(
        {k: pa.array([], type=pa.string() if k in ("phase", "timer") else pa.float64()) for k in SAMPLE_FIELDS})
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def _write_json(path: Path, meta: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    tmp.replace(path)


@dataclass
class ProfileResult:
    samples_path: Path
    json_path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def environment(spec: ProfileSpec, model: Any, device: torch.device, dtype: torch.dtype,
                samples_name: str) -> dict[str, Any]:
    """The samples' metadata: what was measured, on what, with which software, how."""
    source = "preset (random weights)" if spec.model in PRESETS else (
        "local folder (its weights)" if has_weights(spec.model) else "local folder config (random weights)")
    return {
        "format": "simsched step samples v1",
        "samples": samples_name,
        "model": spec.model if spec.model in PRESETS else Path(spec.model).name,
        "model_source": source,
        "architecture": model.config.model_type,
        "model_config": json.loads(model.config.to_json_string()),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "device_name": device_name(device),
        "driver_version": driver_version(device),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "attn_implementation": spec.attn_implementation,
        "timer": "cuda_event" if device.type == "cuda" else "perf_counter",
        "graphs_requested": spec.graphs,
        "graphs_used": False,
        "graphs_fallback": None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()},
        "method": METHOD,
        "status": "running",
        "skipped": [],
        "wall_s": None,
    }


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _warm_up(model: Any, spec: ProfileSpec, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> None:
    """Run eager decode steps of the first decode shape for ``warmup_s`` (GPU clocks, allocator)."""
    if spec.warmup_s <= 0:
        return
    phase, b, n, ctx = next(s for s in spec.shapes() if s[0] == "decode")
    shape = build_shape(model, phase, b, n, ctx, device, dtype, gen, use_graphs=False)
    sync, t_end = synchroniser(device), time.perf_counter() + spec.warmup_s
    with torch.inference_mode():
        while time.perf_counter() < t_end:
            shape.prepare()
            shape.step()
            sync()
    del shape
    _release(device)


def profile(spec: ProfileSpec, out_dir: Path, progress: bool = True) -> ProfileResult:
    """Build the model, time every shape, and write the samples and their JSON into ``out_dir``."""
    t0 = time.perf_counter()
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    if spec.graphs == "on" and device.type != "cuda":
        raise ConfigError("graphs", "CUDA graphs need a CUDA device", spec.graphs, "auto, off")
    limit = getattr(model_config(spec.model), "max_position_embeddings", None)
    longest = max(s[3] for s in spec.shapes())
    if limit and longest > limit:
        raise ConfigError("decode_contexts", f"longest context ({longest}) exceeds the model's "
                                             f"max_position_embeddings ({limit})")
    if spec.threads is not None:
        torch.set_num_threads(int(spec.threads))
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, device, dtype, spec.attn_implementation)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / samples_stem(device_name(device), spec.model)
    result = ProfileResult(stem.with_suffix(".parquet"), stem.with_suffix(".json"))
    meta = environment(spec, model, device, dtype, "")
    result.meta = meta
    gen = torch.Generator().manual_seed(spec.seed)
    use_graphs = device.type == "cuda" and spec.graphs != "off"
    _warm_up(model, spec, device, dtype, gen)
    shapes = spec.shapes()
    last_s = 0.0
    for i, (phase, b, n, ctx) in enumerate(shapes):
        steps = spec.prefill_steps if phase == "prefill" else spec.decode_steps
        if spec.budget_s is not None and time.perf_counter() - t0 + last_s > spec.budget_s:
            result.skipped.append({"phase": phase, "batch_size": b, "new_tokens": n, "context_len": ctx,
                                   "reason": "time budget"})
            continue
        t_shape = time.perf_counter()
        try:
            try:
                shape = build_shape(model, phase, b, n, ctx, device, dtype, gen, use_graphs)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed capture falls back to eager, recorded
                if not use_graphs:
                    raise
                if spec.graphs == "on":
                    raise SimschedError(f"CUDA graph capture failed ({type(exc).__name__}: "
                                        f"{' '.join(str(exc).split())[:300]}); rerun with graphs off") from None
                torch.cuda.synchronize(device)  # raises if the failed capture broke the context
                meta["graphs_fallback"] = f"{phase} b={b} ctx={ctx}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                use_graphs = False
                _release(device)
                shape = build_shape(model, phase, b, n, ctx, device, dtype, gen, use_graphs)
            time_steps(shape, steps, device)  # the untimed trial
            for trial in range(spec.trials):
                for k, sec in enumerate(time_steps(shape, steps, device)):
                    result.rows.append({"phase": phase, "batch_size": b, "new_tokens": n, "context_len": ctx,
                                        "trial": trial, "step": k, "seconds": float(sec), "graphs": int(shape.graphs),
                                        "timer": meta["timer"]})
            meta["graphs_used"] = meta["graphs_used"] or shape.graphs
            del shape
        except torch.OutOfMemoryError:
            result.skipped.append({"phase": phase, "batch_size": b, "new_tokens": n, "context_len": ctx,
                                   "reason": "out of memory"})
        _release(device)
        last_s = time.perf_counter() - t_shape
        if progress:
            print(f"[{i + 1}/{len(shapes)}] {phase} b={b} n={n} ctx={ctx}: {last_s:.1f} s", file=sys.stderr, flush=True)
        result.samples_path = write_samples(stem, result.rows)
        meta.update(samples=result.samples_path.name, skipped=result.skipped,
                    wall_s=round(time.perf_counter() - t0, 3))
        _write_json(result.json_path, meta)
    result.samples_path = write_samples(stem, result.rows)
    meta.update(samples=result.samples_path.name, status="complete" if not result.skipped else "partial",
                skipped=result.skipped, wall_s=round(time.perf_counter() - t0, 3))
    _write_json(result.json_path, meta)
    return result
