"""``python -m calibrate.fit steps=PATH`` (profiler v2 samples) or ``grid=PATH`` (a REFERENCE §4
grid): judge the data with the quality gates, fit, and write ready-to-use ``latency_model``
options, a fit report and plots into the run folder; then log them as one MLflow run.

With step samples the primary model is ``StepTime`` (iteration level); the run-to-completion
forms (seed form, affine, affine + prefill + KV) are fitted to the grid the same samples imply
(``step_fit.derived_grid``). With a grid only the run-to-completion forms are fitted.

Everything is computed before anything is written: data that fail the gates, or a best fit
whose held-out MAPE exceeds ``max_heldout_mape``, are refused with one line naming the file
(exit 2) and leave no files, unless ``accept_noisy=true``, which fits anyway and marks the
report and every option as noisy. Needs no torch (pandas, scipy, matplotlib).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibrate.yamlio import comment_text, json_text, option_text, write_atomic
from simsched.calibration import FORMS, HOLDOUT, GridFit, check_heldout, fit_grid, grid_sha256, read_grid
from simsched.calibration_gates import GateReport, GateSpec, grid_gates, step_gates
from simsched.errors import ConfigError, InputError, SimschedError, check_choice, check_positive
from simsched.roofline import floor_for
from simsched.step_fit import HOLDOUT as STEP_HOLDOUT
from simsched.step_fit import STEP_FORMS, StepFit, derived_grid, fit_steps, read_samples, shape_table

COMPONENT = {"synthetic": ("simsched.latency.SeedForm", "SeedForm"),
             "affine": ("simsched.latency.Affine", "Affine"),
             "affine_kv": ("simsched.latency.Affine", "Affine")}
NOISY = "NOISY: fitted only because accept_noisy=true"


def _slug(text: str) -> str:
    import re

    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]+", "_", text.lower())).strip("_")


def _forms(key: str, value: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    forms = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not forms:
        raise ConfigError(key, "at least one form is needed", list(forms), ", ".join(allowed))
    for f in forms:
        check_choice(key, f, allowed)
    return forms


@dataclass(frozen=True)
class FitSpec:
    """``steps`` (profiler v2 samples) or ``grid`` (REFERENCE §4), exactly one. ``meta``: the
    sidecar JSON (default: beside the input, same stem). ``name``: the latency_model option to
    write (default: GPU and model from the JSON, else the input's stem)."""

    grid: str | None = None
    steps: str | None = None
    meta: str | None = None
    forms: tuple[str, ...] = FORMS
    step_forms: tuple[str, ...] = tuple(STEP_FORMS)
    name: str | None = None
    plots: bool = True
    accept_noisy: bool = False
    max_heldout_mape: float = 0.2
    gates: GateSpec = field(default_factory=GateSpec)

    def __post_init__(self) -> None:
        if bool(self.grid) == bool(self.steps):
            raise ConfigError("steps", "give exactly one input: steps=PATH (profiler v2 samples) or grid=PATH "
                                       "(a calibration grid CSV)")
        object.__setattr__(self, "forms", _forms("forms", self.forms, FORMS))
        object.__setattr__(self, "step_forms", _forms("step_forms", self.step_forms, tuple(STEP_FORMS)))
        if self.name is not None and not _slug(str(self.name)):
            raise ConfigError("name", "must contain letters or digits", self.name)
        if not isinstance(self.accept_noisy, bool):
            raise ConfigError("accept_noisy", "must be true or false", self.accept_noisy)
        check_positive("max_heldout_mape", self.max_heldout_mape)

    @property
    def kind(self) -> str:
        return "steps" if self.steps else "grid"

    @property
    def input_path(self) -> Path:
        return Path(str(self.steps or self.grid))

    @property
    def meta_path(self) -> Path:
        return Path(self.meta) if self.meta else self.input_path.with_suffix(".json")


def read_meta(spec: FitSpec) -> dict[str, Any]:
    """The sidecar JSON ({} when the default one is absent; an explicit one must exist)."""
    path = spec.meta_path
    if not path.is_file():
        if spec.meta:
            raise InputError(str(path), "no such metadata file")
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise InputError(str(path), f"not valid JSON ({getattr(exc, 'msg', exc)})", line) from None
    if not isinstance(meta, dict):
        raise InputError(str(path), "must hold a JSON object")
    return meta


def option_name(spec: FitSpec, meta: dict[str, Any]) -> str:
    if spec.name:
        return _slug(str(spec.name))
    if meta.get("device_name") and meta.get("model"):
        return _slug(f"{meta['device_name']}_{meta['model']}")
    return _slug(spec.input_path.stem.removeprefix("grid_").removeprefix("steps_")) or "calibrated"


def _floor(meta: dict[str, Any]) -> Any:
    """The pure roofline floor of the measured GPU and model (bf16/fp16 only), or None."""
    if str(meta.get("dtype")) not in ("bfloat16", "float16"):
        return None
    return floor_for(str(meta.get("device_name", "")), str(meta.get("model", "")))


@dataclass
class FitResult:
    """Everything a fit computes; nothing is written yet."""

    spec: FitSpec
    meta: dict[str, Any]
    sha: str
    name: str
    gates: GateReport
    rtc_grid: Any
    rtc: GridFit | None
    rtc_error: str | None = None
    samples: Any = None
    shapes: Any = None
    step: StepFit | None = None

    @property
    def heldout_exceeded(self) -> bool:
        return self.best_heldout_mape > self.spec.max_heldout_mape

    @property
    def problems(self) -> list[str]:
        """Why this fit is noisy (empty: it is not)."""
        out = [] if self.gates.passed else [
            f"fails the calibration quality gates: {', '.join(g.name for g in self.gates.failures)}"]
        if self.heldout_exceeded:
            out.append(f"held-out MAPE {self.best_heldout_mape:.1%} exceeds max_heldout_mape "
                       f"{self.spec.max_heldout_mape:.0%}")
        return out

    @property
    def noisy(self) -> bool:
        return bool(self.problems)

    @property
    def rtc_problem(self) -> str | None:
        """Why the run-to-completion option derived from step samples is unusable, if it is."""
        if self.step is None or self.rtc is None or self.rtc.best.heldout_mape <= self.spec.max_heldout_mape:
            return None
        return (f"run-to-completion held-out MAPE {self.rtc.best.heldout_mape:.1%} exceeds max_heldout_mape "
                f"{self.spec.max_heldout_mape:.0%}")

    @property
    def write_rtc(self) -> bool:
        return self.rtc is not None and (self.rtc_problem is None or self.spec.accept_noisy)

    @property
    def best_heldout_mape(self) -> float:
        return self.step.best.heldout_mape if self.step else self.rtc.best.heldout_mape


def compute(spec: FitSpec) -> FitResult:
    """Read, judge and fit. Raises InputError (naming the file) before anything is written."""
    path = spec.input_path
    meta = read_meta(spec)
    floor = _floor(meta)
    source = str(path)
    if spec.kind == "steps":
        samples = read_samples(path)
        shapes = shape_table(samples)
        gates = step_gates(shapes, spec.gates, floor)
    else:
        samples = shapes = None
        grid = read_grid(path)
        gates = grid_gates(grid, spec.gates, floor)
    gates.info["floor"] = "pure roofline of the measured GPU and model" if floor else "no roofline preset matches"
    if not gates.passed and not spec.accept_noisy:
        raise InputError(source, f"fails the calibration quality gates ({gates.summary()}); nothing written "
                                 f"(accept_noisy=true fits it anyway, marked as noisy)")
    step = rtc = None
    rtc_error = None
    if spec.kind == "steps":
        step = fit_steps(shapes, spec.step_forms, source)
        check_heldout(step.best.heldout_mape, spec.max_heldout_mape, source, spec.accept_noisy)
        grid = derived_grid(samples)
        try:
            rtc = fit_grid(grid, spec.forms, source=f"{source} (derived run-to-completion grid)")
        except SimschedError as exc:
            rtc_error = str(exc)
    else:
        rtc = fit_grid(grid, spec.forms, source=source)
        check_heldout(rtc.best.heldout_mape, spec.max_heldout_mape, source, spec.accept_noisy)
    return FitResult(spec=spec, meta=meta, sha=grid_sha256(path), name=option_name(spec, meta), gates=gates,
                     rtc_grid=grid, rtc=rtc, rtc_error=rtc_error, samples=samples, shapes=shapes, step=step)


def _stats(f: Any) -> dict[str, Any]:
    keys = ("rmsre", "mape", "max_ape", "heldout_rmsre", "heldout_mape", "heldout_max_ape")
    return {"coefficients": f.coefficients, **{k: getattr(f, k) for k in keys}}


def report_dict(r: FitResult, files: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "input": {"kind": r.spec.kind, "path": str(r.spec.input_path), "sha256": r.sha,
                  "meta": str(r.spec.meta_path) if r.meta else None},
        "measured": {k: r.meta.get(k) for k in ("model", "model_source", "dtype", "device_name", "driver_version",
                                                "torch_version", "transformers_version", "graphs_used",
                                                "graphs_fallback", "timer", "date", "status")},
        "gates": {**r.gates.to_dict(), "spec": dataclasses.asdict(r.spec.gates)},
        "accept_noisy": r.spec.accept_noisy,
        "status": f"{NOISY}: {'; '.join(r.problems)}" if r.noisy else "passes the quality gates",
        "statistics": "relative error (fitted − measured) / measured: rmsre is the fitted loss",
        "max_heldout_mape": r.spec.max_heldout_mape,
        "latency_model": r.name,
        "files": files,
    }
    if r.step:
        out["step"] = {"holdout": STEP_HOLDOUT, "best_form": r.step.best.form,
                       "forms": {f.form: {**_stats(f), "n_shapes": f.n_shapes} for f in r.step.fits}}
    if r.rtc:
        out["rtc"] = {"holdout": HOLDOUT, "best_form": r.rtc.best.form,
                      "derived_from_steps": r.spec.kind == "steps", "problem": r.rtc_problem,
                      "option_written": r.write_rtc,
                      "forms": {f.form: {**_stats(f), "n_points": f.n_points} for f in r.rtc.fits}}
    elif r.rtc_error:
        out["rtc"] = {"error": r.rtc_error}
    return out


def provenance(r: FitResult, what: str) -> list[str]:
    """Comment lines for an option: where the data come from, the gates, every form's errors."""
    m = r.meta
    lines = [f"latency_model '{what}' fitted by `python -m calibrate.fit` (simsched calibration)"]
    if r.noisy:
        lines += [f"WARNING {NOISY}:"] + [f"  {p}" for p in r.problems] + [
            "  do not read it as a measurement of the hardware"]
    lines.append(f"input: {r.spec.input_path.name} ({r.spec.kind}, sha256 {r.sha[:16]})")
    if m:
        lines.append(f"measured: model {m.get('model')} ({m.get('model_source', '?')}), {m.get('dtype')} on "
                     f"{m.get('device_name')}, driver {m.get('driver_version')}, torch {m.get('torch_version')}, "
                     f"transformers {m.get('transformers_version')}, graphs {m.get('graphs_used', '?')}, {m.get('date')}")
    else:
        lines.append("measured: no sidecar JSON found beside the input")
    lines += [f"gate {g}" for g in r.gates.lines()]
    lines.append("errors are relative, (fitted - measured) / measured; rmsre is the fitted loss")
    return [comment_text(x) for x in lines]


def _fit_lines(fits: Any, best: str, holdout: str) -> list[str]:
    out = [f"forms (held out: {holdout}):"]
    for f in fits:
        mark = "  <- chosen" if f.form == best else ""
        out.append(f"  {f.form:<10} rmsre {f.rmsre:.2%}  MAPE {f.mape:.2%}  held-out rmsre {f.heldout_rmsre:.2%}  "
                   f"MAPE {f.heldout_mape:.2%} (max {f.heldout_max_ape:.1%}){mark}")
    return out


def step_yaml(r: FitResult) -> str:
    best = r.step.best
    source = (f"{'NOISY (accept_noisy) ' if r.noisy else ''}fitted to {r.spec.input_path.name} "
              f"({r.meta.get('device_name', '?')}, {r.meta.get('model', '?')}); held-out MAPE {best.heldout_mape:.1%}")
    comp = best.component(r.name, source)
    comments = provenance(r, r.name) + _fit_lines(r.step.fits, best.form, STEP_HOLDOUT) + [
        "cpu_s is 0: the samples time single steps on the device (GPU time with CUDA graphs); add a serving engine's "
        "host time per step with latency_model.cpu_s",
        f"use: python -m simsched --config-dir <this run folder> latency_model={r.name}"]
    values = {f.name: getattr(comp, f.name) for f in dataclasses.fields(comp)}
    return option_text(comments, "/schema/latency_model/StepTime", "simsched.latency.StepTime", values)


def rtc_yaml(r: FitResult, name: str) -> str:
    best = r.rtc.best
    target, schema = COMPONENT[best.form]
    comp = best.component(name)
    what = "run-to-completion forms fitted to the grid derived from the step samples" if r.step else \
        "run-to-completion forms fitted to the grid"
    extra = [f"WARNING {NOISY}: {r.rtc_problem}"] if r.rtc_problem else []
    comments = provenance(r, name) + extra + [what] + _fit_lines(r.rtc.fits, best.form, HOLDOUT) + [
        "P = sum of prompt tokens = batch_size * prompt_len",
        f"use: python -m simsched --config-dir <this run folder> latency_model={name}"]
    values = {f.name: getattr(comp, f.name) for f in dataclasses.fields(comp)}
    return option_text(comments, f"/schema/latency_model/{schema}", target, values)


@dataclass
class FitOutputs:
    result: FitResult
    report: dict[str, Any]
    yaml_paths: list[Path]
    files: list[Path]

    @property
    def meta(self) -> dict[str, Any]:
        return self.result.meta


def write(r: FitResult, out_dir: Path) -> FitOutputs:
    """Write the run folder: the input (samples as Parquet), shape table and derived grid, the
    options, the plots, and fit.json last (each file atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    src = r.spec.input_path
    if r.spec.kind == "steps":
        dst = out_dir / (src.stem + ".parquet")
        if src.resolve() != dst.resolve():
            tmp = dst.with_name(f".{dst.name}.tmp")
            r.samples.to_parquet(tmp, index=False)
            tmp.replace(dst)
        files.append(dst)
        files.append(write_atomic(out_dir / "shapes.csv", r.shapes.to_csv(index=False)))
        if r.rtc is not None:
            files.append(write_atomic(out_dir / "grid_derived.csv", r.rtc_grid.to_csv(index=False)))
    else:
        dst = out_dir / src.name
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        files.append(dst)
    if r.meta:
        meta_dst = out_dir / r.spec.meta_path.name
        if r.spec.meta_path.resolve() != meta_dst.resolve():
            shutil.copyfile(r.spec.meta_path, meta_dst)
        files.append(meta_dst)
    yamls = []
    if r.step:
        yamls.append(write_atomic(out_dir / "latency_model" / f"{r.name}.yaml", step_yaml(r)))
    if r.write_rtc:
        rtc_name = f"{r.name}_rtc" if r.step else r.name
        yamls.append(write_atomic(out_dir / "latency_model" / f"{rtc_name}.yaml", rtc_yaml(r, rtc_name)))
    files += yamls
    if r.spec.plots:
        from calibrate import plots

        title = f"{r.meta.get('model', src.stem)} on {r.meta.get('device_name', '?')} ({r.meta.get('dtype', '?')})"
        if r.noisy:
            title += " - NOISY (accept_noisy): see fit.json"
        if r.step:
            files.append(plots.plot_step_fit(out_dir / "step_fit.png", r.shapes, r.step, title))
        if r.rtc:
            files.append(plots.plot_fitted_vs_measured(out_dir / "fitted_vs_measured.png", r.rtc_grid, r.rtc, title))
            files.append(plots.plot_residuals(out_dir / "residuals.png", r.rtc_grid, r.rtc, title))
    report = report_dict(r, [str(p.relative_to(out_dir)) for p in files])
    files.append(write_atomic(out_dir / "fit.json", json_text(report)))
    return FitOutputs(result=r, report=report, yaml_paths=yamls, files=files)


def fit_and_report(spec: FitSpec, out_dir: Path) -> FitOutputs:
    return write(compute(spec), out_dir)


def fit_metrics(r: FitResult) -> dict[str, float]:
    out: dict[str, float] = {"best_heldout_mape": r.best_heldout_mape, "gates_passed": float(r.gates.passed)}
    for part, fits in (("step", r.step.fits if r.step else ()), ("rtc", r.rtc.fits if r.rtc else ())):
        for f in fits:
            out.update({f"{part}.{f.form}.{k}": getattr(f, k) for k in
                        ("rmsre", "mape", "heldout_rmsre", "heldout_mape", "heldout_max_ape")})
            out.update({f"{part}.{f.form}.{k}": v for k, v in f.coefficients.items()})
    return {k: v for k, v in out.items() if v == v}  # MLflow takes no NaN


def meta_params(meta: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "model_source", "architecture", "num_parameters", "dtype", "device", "device_name",
            "driver_version", "torch_version", "transformers_version", "cuda_version", "graphs_used", "timer",
            "date", "status", "wall_s")
    params = {f"measured.{k}": meta[k] for k in keys if k in meta}
    params.update({f"measured.grid.{k}": v for k, v in (meta.get("grid") or meta.get("spec") or {}).items()})
    return params


def run_params(r: FitResult) -> dict[str, Any]:
    params = {"input_kind": r.spec.kind, "input_sha256": r.sha, "latency_model": r.name,
              "accept_noisy": r.spec.accept_noisy, "gates_passed": r.gates.passed,
              "gates_failed": ",".join(g.name for g in r.gates.failures) or "none", **meta_params(r.meta)}
    if r.step:
        params["step_best_form"] = r.step.best.form
    if r.rtc:
        params["rtc_best_form"] = r.rtc.best.form
    return params


def track(cfg: Any, out_dir: Path, params: dict[str, Any], metrics: dict[str, Any],
          files: list[Path], meta: dict[str, Any]) -> str | None:
    """Log one calibration run with the configured tracker (tracking=none: nothing)."""
    from simsched.config import build
    from simsched.run import flat_params

    if cfg.get("tracking") is None:
        return None
    hydra_dir = out_dir / ".hydra"
    tracker = build(cfg.tracking, "tracking")
    tags = {"kind": "calibration", "model": str(meta.get("model", "")),
            "device": str(meta.get("device_name", ""))}
    logged = sorted({p if p.parent == out_dir else out_dir / p.relative_to(out_dir).parts[0] for p in files})
    return tracker.log_run(out_dir, {**flat_params(cfg), **params}, metrics,
                           logged + ([hydra_dir] if hydra_dir.is_dir() else []), tags)


def spec_from(cfg: Any) -> FitSpec:
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg, resolve=True)
    gates = node.get("gates") or {}
    try:
        gate_spec = GateSpec(**gates)
    except TypeError:
        raise ConfigError("gates", "unknown gate setting", sorted(gates),
                          ", ".join(f.name for f in dataclasses.fields(GateSpec))) from None
    except ConfigError as exc:
        raise exc.under("gates") from None
    return FitSpec(grid=node.get("grid"), steps=node.get("steps"), meta=node.get("meta"),
                   forms=node.get("forms", FORMS), step_forms=node.get("step_forms", tuple(STEP_FORMS)),
                   name=node.get("name"), plots=bool(node.get("plots", True)),
                   accept_noisy=node.get("accept_noisy", False), max_heldout_mape=node.get("max_heldout_mape", 0.2),
                   gates=gate_spec)


def summary(outputs: FitOutputs) -> str:
    r = outputs.result
    lines = [f"calibration fit of {r.spec.input_path} ({r.spec.kind})"]
    lines += [f"  {g}" for g in r.gates.lines()]
    if r.noisy:
        lines += [f"  {NOISY}:"] + [f"    {p}" for p in r.problems]
    if r.step:
        lines += ["  step time (iteration level):"] + [f"  {x}" for x in _fit_lines(r.step.fits, r.step.best.form,
                                                                                   STEP_HOLDOUT)]
    if r.rtc:
        lines += ["  run to completion:"] + [f"  {x}" for x in _fit_lines(r.rtc.fits, r.rtc.best.form, HOLDOUT)]
        if r.rtc_problem:
            lines.append(f"  {r.rtc_problem}: " + ("option marked NOISY" if r.write_rtc else "no option written"))
    elif r.rtc_error:
        lines.append(f"  run to completion: not fitted ({r.rtc_error})")
    lines += [f"  latency_model option: {p}" for p in outputs.yaml_paths]
    return "\n".join(lines)


def validate(cfg: Any) -> None:
    """Checked before the run folder exists: the spec, the data, the gates, the fit, the tracker."""
    from simsched.config import build

    compute(spec_from(cfg))
    if cfg.get("tracking") is not None:
        build(cfg.tracking, "tracking")


def task(cfg: Any, out_dir: Path) -> None:
    outputs = fit_and_report(spec_from(cfg), out_dir)
    print(summary(outputs))
    r = outputs.result
    track(cfg, out_dir, run_params(r), fit_metrics(r), outputs.files, r.meta)


def main(argv: list[str] | None = None) -> None:
    from calibrate.cli import launch

    launch("calibrate_fit", task, validate, argv)


if __name__ == "__main__":
    main()
