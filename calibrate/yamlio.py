"""Writing config-group options that cannot be broken by the text they carry.

Provenance travels as comments and strings copied from sidecar files a user may have edited
(a model name with a newline, a colon, a quote, a '#'). Comments are reduced to one printable
line each; string values are written as JSON strings, which YAML reads back unchanged; numbers
are written so that YAML 1.1 reads them as floats. Files are written to a temporary name and
renamed, so a failure leaves no half-written option.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable


def comment_text(text: Any) -> str:
    """One printable line: control characters (newlines included) become visible escapes."""
    out = []
    for ch in str(text):
        if ch == "\t":
            out.append(" ")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def yaml_float(v: float) -> str:
    """Shortest round-trip text that YAML 1.1 reads as a float (needs a '.' before any 'e')."""
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"not a finite number: {v}")
    s = repr(v)
    if "e" in s and "." not in s.split("e")[0]:
        s = s.replace("e", ".0e")
    return s


def yaml_value(v: Any) -> str:
    """A scalar as YAML text: floats as floats, ints and bools plainly, strings JSON-quoted."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return yaml_float(v)
    if v is None:
        return "null"
    return json.dumps(str(v), ensure_ascii=False)


def option_text(comments: Iterable[str], schema: str, target: str, values: dict[str, Any]) -> str:
    """A config-group option: provenance comments, the schema default, ``_target_`` and values."""
    lines = [f"# {comment_text(c)}" for c in comments]
    lines += ["defaults:", f"  - {schema}@_here_", "  - _self_", f"_target_: {target}"]
    lines += [f"{k}: {yaml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return json_safe(obj.item())
    return obj


def json_text(obj: Any) -> str:
    """Valid JSON (``allow_nan=False`` after ``json_safe``), indented, with a final newline."""
    return json.dumps(json_safe(obj), indent=1, allow_nan=False, ensure_ascii=False) + "\n"
