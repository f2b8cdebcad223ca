"""Time a transformers causal LM's ``generate`` over a grid of batch sizes × prompt lengths and
write the calibration grid (REFERENCE §4: one CSV row per point) plus a sidecar JSON.

One generate call per trial yields every output length up to its maximum: a stopping
criterion (called once per generated token, after the token is appended) records a
device-synchronised timestamp at each step, so T(b, L, P) for L = 1..max comes from the same
call. Output lengths are forced (min_new_tokens = max_new_tokens, greedy) and each shape gets a
warm-up call first. Needs only torch, transformers and the standard library (plus
``simsched.errors``, itself dependency-free), so it runs on a bare GPU machine.
"""
from __future__ import annotations

import csv
import json
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from calibrate.presets import PRESETS, build_model, check_model, has_weights, model_config
from simsched.errors import ConfigError, check_positive

GRID_COLUMNS = ("batch_size", "prompt_len", "output_len", "mean_latency_s", "std_latency_s", "num_trials")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
METHOD = ("generate() with greedy decoding, min_new_tokens = max_new_tokens, KV cache on; one "
          "warm-up call per (batch_size, prompt_len); per trial one call whose stopping criterion "
          "records a device-synchronised perf_counter timestamp after each generated token; "
          "latency(L) = timestamp of token L minus the synchronised start of the call (prefill "
          "included); random prompt token ids, all prompts of a batch the same length")


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
    bfloat16 on a GPU and float32 on the CPU. ``budget_s`` (optional) stops starting new
    shapes once the next one would likely overrun it; those skipped are listed in the JSON.
    ``threads`` sets torch's CPU threads (CPU timings on a shared machine are steadier with 1)."""

    model: str = "tiny"
    device: str = "auto"
    dtype: str = "auto"
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    prompt_lens: tuple[int, ...] = (128, 1024)
    output_lens: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 224, 256)
    trials: int = 3
    warmup_tokens: int = 16
    seed: int = 0
    budget_s: float | None = None
    threads: int | None = None
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        check_model(str(self.model))
        for key in ("batch_sizes", "prompt_lens", "output_lens"):
            object.__setattr__(self, key, _ints(key, getattr(self, key)))
        check_positive("trials", self.trials, integer=True)
        check_positive("warmup_tokens", self.warmup_tokens, integer=True, allow_zero=True)
        check_positive("seed", self.seed, integer=True, allow_zero=True)
        if self.budget_s is not None:
            check_positive("budget_s", self.budget_s)
        if self.threads is not None:
            check_positive("threads", self.threads, integer=True)
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError("dtype", "unknown dtype", self.dtype, "auto, " + ", ".join(DTYPES))
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(self.device)):
            raise ConfigError("device", "unknown device", self.device, "auto, cpu, cuda, cuda:N, mps")

    @property
    def max_output(self) -> int:
        return max(self.output_lens)


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


def slug(text: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]+", "_", text.lower())).strip("_")


def grid_stem(device_label: str, model: str) -> str:
    """File stem naming the hardware and the model, e.g. grid_nvidia_h100_80gb_hbm3_qwen2_5_1_5b."""
    return f"grid_{slug(device_label)}_{slug(Path(model).name if model not in PRESETS else model)}"


class StepClock(StoppingCriteria):
    """Records a synchronised timestamp each time generate() has appended a token; never stops."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.ticks: list[float] = []
        self._never: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.sync()
        self.ticks.append(time.perf_counter())
        if self._never is None:
            self._never = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return self._never


@dataclass
class ProfileResult:
    csv_path: Path
    json_path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def _generation_config(model: Any, tokens: int) -> GenerationConfig:
    """Greedy, exactly ``tokens`` new tokens (so a folder's sampling defaults cannot change the
    work being timed)."""
    cfg = model.config
    eos = getattr(model.generation_config, "eos_token_id", None) or getattr(cfg, "eos_token_id", None)
    pad = getattr(cfg, "pad_token_id", None)
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else (eos if eos is not None else 0)
    return GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, num_beams=1,
                            use_cache=True, eos_token_id=eos, pad_token_id=pad)


def time_shape(model: Any, input_ids: torch.Tensor, spec: ProfileSpec,
               sync: Callable[[], None]) -> list[list[float]]:
    """Per trial, the elapsed seconds at each generated token 1..max_output."""
    mask = torch.ones_like(input_ids)
    with torch.inference_mode():
        if spec.warmup_tokens:
            model.generate(input_ids=input_ids, attention_mask=mask,
                           generation_config=_generation_config(model, spec.warmup_tokens))
        runs = []
        gen_cfg = _generation_config(model, spec.max_output)
        for _ in range(spec.trials):
            clock = StepClock(sync)
            sync()
            start = time.perf_counter()
            model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gen_cfg,
                           stopping_criteria=StoppingCriteriaList([clock]))
            if len(clock.ticks) != spec.max_output:
                raise RuntimeError(f"generate produced {len(clock.ticks)} steps, expected {spec.max_output}")
            runs.append([t - start for t in clock.ticks])
    return runs


def grid_rows(batch_size: int, prompt_len: int, output_lens: tuple[int, ...],
              runs: list[list[float]]) -> list[dict[str, Any]]:
    rows = []
    for L in output_lens:
        values = [run[L - 1] for run in runs]
        rows.append({
            "batch_size": batch_size, "prompt_len": prompt_len, "output_len": L,
            "mean_latency_s": statistics.fmean(values),
            "std_latency_s": statistics.stdev(values) if len(values) > 1 else 0.0,
            "num_trials": len(values),
        })
    return rows


def write_grid(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=GRID_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})
    tmp.replace(path)


def sidecar(spec: ProfileSpec, model: Any, device: torch.device, dtype: torch.dtype, csv_name: str) -> dict[str, Any]:
    """The grid's metadata: what was measured, on what, with which software, how."""
    source = "preset (random weights)" if spec.model in PRESETS else (
        "local folder (its weights)" if has_weights(spec.model) else "local folder config (random weights)")
    return {
        "format": "simsched calibration grid v1",
        "grid_csv": csv_name,
        "model": spec.model if spec.model in PRESETS else Path(spec.model).name,
        "model_source": source,
        "architecture": model.config.model_type,
        "model_config": json.loads(model.config.to_json_string()),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "cuda_version": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "grid": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items() if k != "model"},
        "method": METHOD,
        "status": "running",
        "skipped": [],
        "wall_s": None,
    }


def _write_json(path: Path, meta: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    tmp.replace(path)


def profile(spec: ProfileSpec, out_dir: Path, progress: bool = True) -> ProfileResult:
    """Build the model, time every shape, and write ``<stem>.csv`` and ``<stem>.json`` in
    ``out_dir``. Both files are rewritten after each shape, so an interrupted run keeps what it
    measured (the JSON's status says so)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    limit = getattr(model_config(spec.model), "max_position_embeddings", None)
    if limit and max(spec.prompt_lens) + spec.max_output > limit:
        raise ConfigError("prompt_lens", f"longest prompt + output ({max(spec.prompt_lens) + spec.max_output}) "
                                         f"exceeds the model's max_position_embeddings ({limit})")
    if spec.threads is not None:
        torch.set_num_threads(int(spec.threads))
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, device, dtype, spec.attn_implementation)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = grid_stem(device_name(device), spec.model)
    result = ProfileResult(out_dir / f"{stem}.csv", out_dir / f"{stem}.json")
    meta = sidecar(spec, model, device, dtype, result.csv_path.name)
    _write_json(result.json_path, meta)
    sync = synchroniser(device)
    prompts = torch.Generator().manual_seed(spec.seed)
    vocab = int(model.config.vocab_size)
    shapes = [(b, p) for b in spec.batch_sizes for p in spec.prompt_lens]
    last_shape_s = 0.0
    bar = tqdm(shapes, desc="profiling", unit="shape", disable=not progress, file=sys.stderr)
    for b, p in bar:
        bar.set_postfix(batch=b, prompt=p)
        ids = torch.randint(0, vocab, (b, p), generator=prompts)  # drawn even if skipped: same prompts
        if spec.budget_s is not None and time.perf_counter() - t0 + last_shape_s > spec.budget_s:
            result.skipped.append({"batch_size": b, "prompt_len": p, "reason": "time budget"})
            continue
        t_shape = time.perf_counter()
        try:
            runs = time_shape(model, ids.to(device), spec, sync)
        except torch.OutOfMemoryError:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            result.skipped.append({"batch_size": b, "prompt_len": p, "reason": "out of memory"})
            continue
        last_shape_s = time.perf_counter() - t_shape
        result.rows += grid_rows(b, p, spec.output_lens, runs)
        write_grid(result.csv_path, result.rows)
        meta.update(skipped=result.skipped, wall_s=round(time.perf_counter() - t0, 3))
        _write_json(result.json_path, meta)
    bar.close()
    if not result.rows:
        write_grid(result.csv_path, result.rows)
    meta.update(status="complete" if not result.skipped else "partial", skipped=result.skipped,
                wall_s=round(time.perf_counter() - t0, 3))
    _write_json(result.json_path, meta)
    return result
