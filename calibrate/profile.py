"""``python -m calibrate.profile model=qwen2_5_1_5b device=cuda``: measure a calibration grid on
this machine, fit it (``fit: true``) and log everything as one MLflow run.

The run folder gets ``grid_<device>_<model>.csv`` and ``.json`` (written as shapes complete),
then what ``calibrate.fit`` writes. Needs the ``calibrate`` extra (torch, transformers).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from simsched.errors import SimschedError


def _profiler() -> Any:
    try:
        from calibrate import profiler
    except ImportError as exc:
        if exc.name in ("torch", "transformers"):
            raise SimschedError(f"calibrate.profile needs {exc.name}: pip install -e '.[calibrate]'") from None
        raise
    return profiler


def profile_spec(cfg: Any) -> Any:
    from omegaconf import OmegaConf

    profiler = _profiler()
    node = OmegaConf.to_container(cfg, resolve=True)
    keys = [f.name for f in dataclasses.fields(profiler.ProfileSpec)]
    return profiler.ProfileSpec(**{k: node[k] for k in keys if k in node})


def fit_spec(cfg: Any, grid: Path, meta: Path) -> Any:
    from calibrate.fit import FitSpec

    return FitSpec(grid=str(grid), meta=str(meta), forms=tuple(cfg.forms), name=cfg.name, plots=bool(cfg.plots))


def check_plan(spec: Any, forms: tuple[str, ...]) -> None:
    """Fail before measuring if the planned grid could not be fitted (too few batch sizes or
    lengths for a form): the fit's own checks, run on the grid's shape."""
    import pandas as pd

    from simsched.calibration import fit_grid
    from simsched.errors import ConfigError, InputError

    plan = pd.DataFrame([{"batch_size": b, "prompt_len": p, "output_len": L, "mean_latency_s": 1.0}
                         for b in spec.batch_sizes for p in spec.prompt_lens for L in spec.output_lens])
    try:
        fit_grid(plan, forms, source="planned grid")
    except InputError as exc:
        raise ConfigError("fit", f"{exc}; measure more points or set fit=false") from None


def validate(cfg: Any) -> None:
    """Checked before the run folder exists: the grid spec, the device, the fit and tracker."""
    from simsched.config import build

    spec = profile_spec(cfg)
    _profiler().resolve_device(spec.device)
    if cfg.fit:
        check_plan(spec, fit_spec(cfg, Path("grid.csv"), Path("grid.json")).forms)
    if cfg.get("tracking") is not None:
        build(cfg.tracking, "tracking")


def task(cfg: Any, out_dir: Path) -> None:
    from calibrate import fit as fitting
    from calibrate.gpu_grid import summary

    profiler = _profiler()
    result = profiler.profile(profile_spec(cfg), out_dir)
    print(summary(result.rows, result.skipped))
    meta = fitting.read_meta(fitting.FitSpec(grid=str(result.csv_path), meta=str(result.json_path)))
    params = fitting.meta_params(meta)
    files, metrics = [result.csv_path, result.json_path], {}
    if not result.rows:
        fitting.track(cfg, out_dir, params, metrics, files, meta)
        raise SimschedError(f"no shape could be measured (see {result.json_path})")
    if cfg.fit:
        try:
            outputs = fitting.fit_and_report(fit_spec(cfg, result.csv_path, result.json_path), out_dir)
        except SimschedError as exc:
            fitting.track(cfg, out_dir, {**params, "fit_error": str(exc)}, metrics, files, meta)
            raise SimschedError(f"grid measured in {out_dir}, but the fit failed: {exc}") from None
        print(fitting.summary(outputs))
        files, metrics = outputs.files, fitting.fit_metrics(outputs.fit)
        params.update(best_form=outputs.fit.best.form, holdout=outputs.fit.holdout,
                      grid_sha256=outputs.report["grid_sha256"], latency_model=outputs.report["latency_model"])
    fitting.track(cfg, out_dir, params, metrics, files, meta)


def main(argv: list[str] | None = None) -> None:
    from calibrate.cli import launch

    launch("calibrate_profile", task, validate, argv)


if __name__ == "__main__":
    main()
