"""``python -m calibrate.fit grid=PATH``: fit every latency-model form to a measured grid,
pick the best by held-out error, and write a ready-to-use ``latency_model`` option, a fit
report and two plots into the run folder; then log them, with the grid and its JSON, as one
MLflow run. Needs no torch (pandas, scipy, matplotlib).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simsched.calibration import FORM_COEFFICIENTS, FORMS, HOLDOUT, GridFit, fit_grid, grid_sha256, read_grid
from simsched.errors import ConfigError, InputError, check_choice

COMPONENT = {"synthetic": ("simsched.latency.SeedForm", "SeedForm"),
             "affine": ("simsched.latency.Affine", "Affine"),
             "affine_kv": ("simsched.latency.Affine", "Affine")}


def _slug(text: str) -> str:
    import re

    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]+", "_", text.lower())).strip("_")


@dataclass(frozen=True)
class FitSpec:
    """``meta``: the grid's sidecar JSON (default: beside the grid, same stem). ``name``: the
    latency_model option to write (default: GPU and model from the JSON, else the grid's stem)."""

    grid: str | None = None
    meta: str | None = None
    forms: tuple[str, ...] = FORMS
    name: str | None = None
    plots: bool = True

    def __post_init__(self) -> None:
        if not self.grid:
            raise ConfigError("grid", "path to a calibration grid CSV is required")
        forms = tuple(self.forms) if isinstance(self.forms, (list, tuple)) else (self.forms,)
        if not forms:
            raise ConfigError("forms", "at least one form is needed", list(forms), ", ".join(FORMS))
        for f in forms:
            check_choice("forms", f, FORMS)
        object.__setattr__(self, "forms", forms)
        if self.name is not None and not _slug(str(self.name)):
            raise ConfigError("name", "must contain letters or digits", self.name)

    @property
    def meta_path(self) -> Path:
        return Path(self.meta) if self.meta else Path(str(self.grid)).with_suffix(".json")


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
    return _slug(Path(str(spec.grid)).stem.removeprefix("grid_")) or "calibrated"


def _yaml_float(v: float) -> str:
    """Shortest round-trip text that YAML 1.1 reads as a float (needs a '.' before any 'e')."""
    s = repr(float(v))
    if "e" in s and "." not in s.split("e")[0]:
        s = s.replace("e", ".0e")
    return s


def latency_model_yaml(fit: GridFit, name: str, provenance: list[str]) -> str:
    """The best form as a conf/latency_model option (schema default first, like the shipped ones)."""
    best = fit.best
    target, schema = COMPONENT[best.form]
    comp = best.component(name)
    lines = [f"# {p}" for p in provenance]
    lines += ["defaults:", f"  - /schema/latency_model/{schema}@_here_", "  - _self_",
              f"_target_: {target}", f"name: {name}"]
    lines += [f"{f.name}: {_yaml_float(getattr(comp, f.name))}" for f in dataclasses.fields(comp) if f.name != "name"]
    return "\n".join(lines) + "\n"


def provenance_lines(spec: FitSpec, meta: dict[str, Any], fit: GridFit, grid: Any, sha: str, name: str) -> list[str]:
    g = grid
    lines = [
        f"latency_model '{name}' fitted by `python -m calibrate.fit` (simsched calibration)",
        f"grid: {Path(str(spec.grid)).name} (sha256 {sha[:16]}), {len(g)} points: batch sizes "
        f"{sorted(set(g['batch_size'].tolist()))}, prompt lengths {sorted(set(g['prompt_len'].tolist()))}, "
        f"output lengths {int(g['output_len'].min())}..{int(g['output_len'].max())}",
    ]
    if meta:
        lines.append(f"measured: model {meta.get('model')} ({meta.get('model_source', '?')}), "
                     f"{meta.get('dtype')} on {meta.get('device_name')}, torch {meta.get('torch_version')}, "
                     f"transformers {meta.get('transformers_version')}, {meta.get('date')}, "
                     f"status {meta.get('status', '?')}")
    else:
        lines.append("measured: no sidecar JSON found beside the grid")
    lines.append(f"form: {fit.best.form}, chosen by the lowest held-out MAPE ({HOLDOUT}); "
                 f"P = sum of prompt tokens = batch_size * prompt_len")
    for f in fit.fits:
        lines.append(f"  {f.form:<10} R² {f.r2:.5f}  MAPE {f.mape:.2%}  held-out MAPE {f.heldout_mape:.2%} "
                     f"(max {f.heldout_max_ape:.1%})")
    lines.append(f"use: python -m simsched --config-dir <this run folder> latency_model={name}")
    lines.append(f"  or copy this file to conf/latency_model/{name}.yaml")
    return lines


def report_dict(spec: FitSpec, meta: dict[str, Any], fit: GridFit, sha: str, name: str) -> dict[str, Any]:
    return {
        "grid": str(spec.grid),
        "grid_sha256": sha,
        "meta": str(spec.meta_path) if meta else None,
        "holdout": HOLDOUT,
        "best_form": fit.best.form,
        "latency_model": name,
        "forms": {f.form: {"coefficients": f.coefficients, "r2": f.r2, "mape": f.mape,
                           "heldout_mape": f.heldout_mape, "heldout_max_ape": f.heldout_max_ape,
                           "n_points": f.n_points, "n_coefficients": len(FORM_COEFFICIENTS[f.form])}
                  for f in fit.fits},
        "measured": {k: meta.get(k) for k in ("model", "model_source", "dtype", "device_name",
                                              "torch_version", "transformers_version", "date", "status")},
    }


@dataclass
class FitOutputs:
    fit: GridFit
    report: dict[str, Any]
    yaml_path: Path
    files: list[Path]
    meta: dict[str, Any]


def fit_and_report(spec: FitSpec, out_dir: Path) -> FitOutputs:
    """Fit, then write the YAML option, fit.json and the plots; the grid and its JSON are copied
    into ``out_dir`` too, so that the run folder holds everything before any tracking."""
    grid_path = Path(str(spec.grid))
    grid = read_grid(grid_path)
    meta = read_meta(spec)
    fit = fit_grid(grid, spec.forms, source=str(grid_path))
    sha = grid_sha256(grid_path)
    name = option_name(spec, meta)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for src in [grid_path] + ([spec.meta_path] if meta else []):
        dst = out_dir / src.name
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        files.append(dst)
    report = report_dict(spec, meta, fit, sha, name)
    (out_dir / "fit.json").write_text(json.dumps(report, indent=1) + "\n")
    files.append(out_dir / "fit.json")
    yaml_path = out_dir / "latency_model" / f"{name}.yaml"
    yaml_path.parent.mkdir(exist_ok=True)
    yaml_path.write_text(latency_model_yaml(fit, name, provenance_lines(spec, meta, fit, grid, sha, name)))
    files.append(yaml_path.parent)  # logged as the folder latency_model/
    if spec.plots:
        from calibrate.plots import plot_fitted_vs_measured, plot_residuals

        title = f"{meta.get('model', grid_path.stem)} on {meta.get('device_name', '?')} ({meta.get('dtype', '?')})"
        files.append(plot_fitted_vs_measured(out_dir / "fitted_vs_measured.png", grid, fit, title))
        files.append(plot_residuals(out_dir / "residuals.png", grid, fit, title))
    return FitOutputs(fit=fit, report=report, yaml_path=yaml_path, files=files, meta=meta)


def fit_metrics(fit: GridFit) -> dict[str, float]:
    out: dict[str, float] = {"best_heldout_mape": fit.best.heldout_mape, "best_r2": fit.best.r2,
                             "best_mape": fit.best.mape}
    for f in fit.fits:
        out.update({f"{f.form}.r2": f.r2, f"{f.form}.mape": f.mape, f"{f.form}.heldout_mape": f.heldout_mape,
                    f"{f.form}.heldout_max_ape": f.heldout_max_ape})
        out.update({f"{f.form}.{k}": v for k, v in f.coefficients.items()})
    return out


def meta_params(meta: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "model_source", "architecture", "num_parameters", "dtype", "device", "device_name",
            "torch_version", "transformers_version", "cuda_version", "date", "status", "wall_s")
    params = {f"measured.{k}": meta[k] for k in keys if k in meta}
    params.update({f"measured.grid.{k}": v for k, v in (meta.get("grid") or {}).items()})
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
    return tracker.log_run(out_dir, {**flat_params(cfg), **params}, metrics,
                           files + ([hydra_dir] if hydra_dir.is_dir() else []), tags)


def spec_from(cfg: Any) -> FitSpec:
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg, resolve=True)
    return FitSpec(grid=node.get("grid"), meta=node.get("meta"), forms=node.get("forms", FORMS),
                   name=node.get("name"), plots=bool(node.get("plots", True)))


def summary(outputs: FitOutputs) -> str:
    lines = [f"calibration fit of {outputs.report['grid']} ({HOLDOUT} held-out error)"]
    for f in outputs.fit.fits:
        mark = "  <- best" if f.form == outputs.fit.best.form else ""
        lines.append(f"  {f.form:<10} R² {f.r2:.5f}  MAPE {f.mape:6.2%}  held-out MAPE {f.heldout_mape:6.2%}{mark}")
    lines.append(f"  latency_model option: {outputs.yaml_path}")
    return "\n".join(lines)


def validate(cfg: Any) -> None:
    """Checked before the run folder exists: the spec, the grid, the fit, the tracker."""
    from simsched.config import build

    spec = spec_from(cfg)
    fit_grid(read_grid(spec.grid), spec.forms, source=str(spec.grid))
    read_meta(spec)
    if cfg.get("tracking") is not None:
        build(cfg.tracking, "tracking")


def task(cfg: Any, out_dir: Path) -> None:
    spec = spec_from(cfg)
    outputs = fit_and_report(spec, out_dir)
    print(summary(outputs))
    params = {"grid_sha256": outputs.report["grid_sha256"], "best_form": outputs.fit.best.form,
              "holdout": HOLDOUT, "latency_model": outputs.report["latency_model"], **meta_params(outputs.meta)}
    track(cfg, out_dir, params, fit_metrics(outputs.fit), outputs.files, outputs.meta)


def main(argv: list[str] | None = None) -> None:
    from calibrate.cli import launch

    launch("calibrate_fit", task, validate, argv)


if __name__ == "__main__":
    main()
