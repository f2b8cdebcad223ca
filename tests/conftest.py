"""Shared test helpers: small components built in plain Python."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from simsched.batchers import DynamicBatcher, FixedBatcher  # noqa: E402
from simsched.cluster import Gpus  # noqa: E402
from simsched.engines.run_to_completion import simulate  # noqa: E402
from simsched.latency import Affine, SeedForm  # noqa: E402
from simsched.predictor import Oracle  # noqa: E402
from simsched.scheduler import Scheduler  # noqa: E402
from simsched.workloads import RequestTable  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_tracking_uri():
    """``mlflow.set_tracking_uri`` writes ``MLFLOW_TRACKING_URI`` into ``os.environ``: left
    there, every later test's subprocess would track to that test's store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def run_sim(req, scheduler=None, latency=None, gpus=None, predictor=None, seed=0, **kw):
    return simulate(req, scheduler or Scheduler(DynamicBatcher()), latency or SeedForm(),
                    gpus or Gpus(), predictor or Oracle(), np.random.default_rng(seed), **kw)


def table(arrival, prompt, output) -> RequestTable:
    return RequestTable(np.asarray(arrival, float), np.asarray(prompt), np.asarray(output))


@pytest.fixture
def fixed_batcher():
    return FixedBatcher


@pytest.fixture
def affine():
    return Affine
