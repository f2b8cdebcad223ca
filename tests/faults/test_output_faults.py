"""Fault injection on run folders: interrupted writes, truncated, damaged or missing files.

Whatever happens to a job's files, the sweep summary and ``python -m simsched.report`` never
count it as ok: only a folder whose ``done.json`` vouches for every file (size and SHA-256) is
ok, and only ok jobs enter the means. The others are listed with what is wrong, the report's
exit status is 1, and nothing prints a traceback.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from faultkit import TINY, no_traceback, run

FILES = ["metrics.json", "requests.parquet", "batches.parquet", "done.json", ".hydra/config.yaml",
         ".hydra/overrides.yaml"]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_byte(path: Path) -> None:   # same size, different content
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))


def append_garbage(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\x00garbage")


def empty(path: Path) -> None:
    path.write_bytes(b"")


def delete(path: Path) -> None:
    path.unlink()


DAMAGE = {"truncated": truncate, "one byte changed": flip_a_byte, "garbage appended": append_garbage,
          "emptied": empty, "deleted": delete}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A real 4-job sweep (two schedulers x two seeds), untracked."""
    cwd = tmp_path_factory.mktemp("template")
    proc = run(["-m", "scheduler=static_fifo,multi_bin_dynamic", "seed=0,1", *TINY, "tracking=none",
                "hydra.sweep.dir=sweep"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "sweep"


@pytest.fixture
def sweep(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "sweep"))


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_file_makes_its_job_not_ok_in_the_report(sweep, capsys, name, damage):
    from simsched.app import report

    before = pd.read_csv(sweep / "summary.csv")
    assert set(before["status"]) == {"ok"}
    DAMAGE[damage](sweep / "1" / name)
    code = report.main([str(sweep), "--out", str(sweep / "again")])
    out = capsys.readouterr().out
    no_traceback(out)
    assert code == 1
    table = pd.read_csv(sweep / "again" / "summary.csv")
    assert len(table) == 4                        # the damaged job is listed, not dropped
    bad = table[table["job"] == 1].iloc[0]
    assert bad["status"] in ("corrupt", "incomplete"), bad.to_dict()
    assert "job 1:" in out
    assert (table[table["job"] != 1]["status"] == "ok").all()
    ok = table[table["status"] == "ok"]
    assert ok["throughput_rps"].notna().all()
    if name == "metrics.json" and bad["status"] != "ok":
        assert pd.isna(bad.get("throughput_rps")), "a damaged job's figures must not be read"
    agg = pd.read_csv(sweep / "again" / "summary_mean_ci.csv")
    assert agg["n"].sum() == 3                    # only verified jobs enter the means


@pytest.mark.parametrize("name", ["metrics.json", "requests.parquet", "batches.parquet", "done.json"])
def test_a_damaged_file_is_named_in_the_row(sweep, name):
    from simsched.app import report

    truncate(sweep / "2" / name)
    row = report.collect(sweep).set_index("job").loc[2]
    assert row["status"] == "corrupt" and (name in row["error"] or "done.json" in row["error"]), row["error"]


def test_a_job_without_done_json_is_incomplete_even_with_its_metrics(sweep):
    from simsched.app import report

    (sweep / "0" / "done.json").unlink()          # what a kill between metrics.json and done.json leaves
    row = report.collect(sweep).set_index("job").loc[0]
    assert row["status"] == "incomplete" and "interrupted" in row["error"]


def test_a_job_that_never_started_is_listed_from_jobs_json(sweep):
    from simsched.app import report

    shutil.rmtree(sweep / "3")
    table = report.collect(sweep).set_index("job")
    assert len(table) == 4 and table.loc[3, "status"] == "incomplete" and table.loc[3, "error"] == "not started"
    assert "seed=1" in table.loc[3, "overrides"]


def test_temporary_files_of_a_killed_writer_are_ignored(sweep):
    """A writer killed mid-file leaves ``.NAME.PID.tmp``: never read as the file."""
    from simsched.app import report

    (sweep / "0" / "done.json").rename(sweep / "0" / ".done.json.123.tmp")
    assert report.collect(sweep).set_index("job").loc[0, "status"] == "incomplete"


@pytest.mark.parametrize("stage", ["requests.parquet", "batches.parquet", "latency_cdf.png", "metrics.json",
                                   "done.json"])
def test_a_run_killed_while_writing_leaves_no_partial_file_and_no_marker(tmp_path, monkeypatch, stage):
    """A crash inside any write: the final name never holds a partial file, no temporary file is
    left, and without ``done.json`` the folder reads as incomplete."""
    from omegaconf import OmegaConf

    import simsched.outputs as outputs
    from simsched.outputs import check_run_dir
    from simsched.run import run as run_one

    real = outputs.os.replace

    def crash(src, dst, *a, **k):
        if Path(dst).name == stage:
            Path(src).write_bytes(Path(src).read_bytes()[:10])   # half written, then the process dies
            raise KeyboardInterrupt("killed")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(outputs.os, "replace", crash)
    from hydra import compose, initialize_config_dir

    from simsched.app.paths import config_dir
    from simsched.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", ["tracking=none", "workload.num_requests=100", "output.quiet=true"])
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_one(OmegaConf.create(OmegaConf.to_container(cfg)), out)
    assert not (out / stage).exists()
    assert not list(out.glob(".*.tmp")), list(out.iterdir())
    assert check_run_dir(out).status == "incomplete"


def test_done_json_covers_every_output_file(sweep):
    marker = json.loads((sweep / "0" / "done.json").read_text())["files"]
    assert {"metrics.json", "requests.parquet", "batches.parquet", ".hydra/config.yaml",
            ".hydra/overrides.yaml"} <= set(marker)
