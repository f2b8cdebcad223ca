"""``python -m simsched.validate``: report files, MLflow logging, unreachable store, bad arguments."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from simsched.validate.__main__ import main


def test_quick_check_writes_report_and_logs_one_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["--quick", "--checks", "2", "--out", str(out), "--tracking-uri", uri])
    assert code == 0
    text = (out / "report.md").read_text()
    assert "Theorem 4.2" in text and "| PASS |" in text and "![c2_theorem42.png](c2_theorem42.png)" in text
    assert (out / "c2_theorem42.png").stat().st_size > 1000
    data = json.loads((out / "results.json").read_text())
    assert data["checks"][0]["passed"] is True
    assert all(r["verdict"] == "PASS" for r in data["rows"])
    assert (out / "results.csv").read_text().startswith("check,point,quantity,expected")

    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["simsched-validation"])
    assert len(runs) == 1
    assert runs.iloc[0]["metrics.c2_multibin_theorem/passed"] == 1.0
    assert runs.iloc[0]["tags.kind"] == "validation"


def test_unreachable_tracking_server_keeps_the_report(tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["--quick", "--checks", "2", "--out", str(out), "--tracking-uri", "http://127.0.0.1:9"])
    assert code == 0
    assert (out / "report.md").is_file() and (out / "results.json").is_file()


@pytest.mark.parametrize("args, key", [(["--checks", "9"], "--checks"), (["--checks", "x"], "--checks"),
                                       (["--reps", "1"], "--reps"), (["--jobs", "0"], "--jobs"),
                                       (["--bogus"], "--bogus")])
def test_bad_arguments_exit_2_with_one_line(args, key, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and key in err[0]


def test_cli_entry_point_reports_bad_arguments_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "simsched.validate", "--checks", "8"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --checks: unknown check 8; allowed: 1-7"
