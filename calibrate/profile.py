"""``python -m calibrate.profile model=qwen2_5_1_5b device=cuda``: measure step samples with
profiler v2 on this machine, fit them (``fit: true``) and log everything as one MLflow run.

The run folder gets ``steps_<device>_<model>.parquet`` and ``.json`` (written as shapes
complete), then what ``calibrate.fit`` writes. Needs the ``calibrate`` extra (torch, transformers).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from simsched.errors import ConfigError, InputError, SimschedError


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


def fit_spec(cfg: Any, samples: Path, meta: Path) -> Any:
    """The fit's spec from the same config (the fit keys of conf/calibrate_profile.yaml)."""
    from omegaconf import OmegaConf

    from calibrate.fit import spec_from

    node = OmegaConf.create({k: cfg[k] for k in ("forms", "step_forms", "name", "plots", "accept_noisy",
                                                 "max_heldout_mape", "gates")})
    node.steps, node.meta = str(samples), str(meta)
    return spec_from(node)


def check_plan(spec: Any) -> None:
    """Fail before measuring if the planned shapes could not be fitted (a phase missing, one
    batch size or one context only): the fit's own checks, run on the planned shapes."""
    import pandas as pd

    from simsched.step_fit import fit_steps, regressors

    plan = pd.DataFrame(spec.shapes(), columns=["phase", "batch_size", "new_tokens", "context_len"])
    plan["median_s"] = regressors(plan).sum(axis=1)
    try:
        fit_steps(plan, ("step",), source="planned shapes")
    except InputError as exc:
        raise ConfigError("fit", f"{exc}; measure more shapes or set fit=false") from None


def validate(cfg: Any) -> None:
    """Checked before the run folder exists: the spec, the device, the fit and the tracker."""
    from simsched.config import build

    spec = profile_spec(cfg)
    _profiler().resolve_device(spec.device)
    if cfg.fit:
        fit_spec(cfg, Path("samples.parquet"), Path("samples.json"))
        check_plan(spec)
    if cfg.get("tracking") is not None:
        build(cfg.tracking, "tracking")


def task(cfg: Any, out_dir: Path) -> None:
    from calibrate import fit as fitting
    from calibrate.gpu_grid import summary

    profiler = _profiler()
    result = profiler.profile(profile_spec(cfg), out_dir)
    print(summary(result.rows, result.skipped))
    params, files, metrics = fitting.meta_params(result.meta), [result.samples_path, result.json_path], {}
    if not result.rows:
        fitting.track(cfg, out_dir, params, metrics, files, result.meta)
        raise SimschedError(f"no shape could be measured (see {result.json_path})")
    if cfg.fit:
        try:
            outputs = fitting.fit_and_report(fit_spec(cfg, result.samples_path, result.json_path), out_dir)
        except SimschedError as exc:
            fitting.track(cfg, out_dir, {**params, "fit_error": str(exc)}, metrics, files, result.meta)
            raise SimschedError(f"samples measured in {out_dir}, but the fit refused them: {exc}") from None
        print(fitting.summary(outputs))
        files, metrics = outputs.files, fitting.fit_metrics(outputs.result)
        params = fitting.run_params(outputs.result)
    fitting.track(cfg, out_dir, params, metrics, files, result.meta)


def main(argv: list[str] | None = None) -> None:
    from calibrate.cli import launch

    launch("calibrate_profile", task, validate, argv)


if __name__ == "__main__":
    main()
