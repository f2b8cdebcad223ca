"""Fault injection, trace cache (issue 15 item 9): the Parquet cache is keyed on the file's
content, so an edit that keeps size and modification time is never served stale."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from simsched.workloads.trace_files import BURSTGPT, load_trace

HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
ROWS = ["0,ChatGPT,10,3,13,API log\n", "1,GPT-4,20,5,25,API log\n", "2,ChatGPT,30,7,37,Conversation log\n"]


def _edit_keeping_size_and_mtime(path: Path, edit) -> None:
    st = path.stat()
    path.write_text(edit(path.read_text()))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


EDITS = {
    "one-digit": (lambda t: t.replace(",20,5,25,", ",29,5,25,"), lambda f: list(f["prompt"]) == [10, 29, 30]),
    "swap-rows": (lambda t: HEADER + ROWS[1].replace("1,", "0,", 1) + ROWS[0].replace("0,", "1,", 1) + ROWS[2],
                  lambda f: list(f["prompt"]) == [20, 10, 30]),
    "model-name": (lambda t: t.replace("GPT-4", "GPT-5"), lambda f: "GPT-5" in set(f["model"].astype(str))),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_same_size_same_mtime_edit_is_not_served_stale(tmp_path, name):
    edit, check = EDITS[name]
    path, cache = tmp_path / "t.csv", tmp_path / "cache"
    path.write_text(HEADER + "".join(ROWS))
    assert not load_trace(path, BURSTGPT, cache).from_cache
    assert load_trace(path, BURSTGPT, cache).from_cache
    _edit_keeping_size_and_mtime(path, edit)
    fresh = load_trace(path, BURSTGPT, cache)
    assert not fresh.from_cache and check(fresh.frame)


def test_damaged_cache_is_rebuilt_from_the_csv(tmp_path):
    path, cache = tmp_path / "t.csv", tmp_path / "cache"
    path.write_text(HEADER + "".join(ROWS))
    load_trace(path, BURSTGPT, cache)
    (entry,) = cache.glob("*.parquet")
    entry.write_bytes(entry.read_bytes()[:40])                   # truncated, as after a crash
    again = load_trace(path, BURSTGPT, cache)
    assert not again.from_cache and list(again.frame["prompt"]) == [10, 20, 30]


def test_a_copy_of_the_same_content_shares_the_cache(tmp_path):
    path, cache = tmp_path / "t.csv", tmp_path / "cache"
    path.write_text(HEADER + "".join(ROWS))
    load_trace(path, BURSTGPT, cache)
    copy = tmp_path / "elsewhere" / "t.csv"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    assert load_trace(copy, BURSTGPT, cache).from_cache
