"""Atomic result files shared by the experiments: never half-written, safe to resume from."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c) for c in columns})
    write_atomic(path, buf.getvalue())


def save_figure(path: Path, fig) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_atomic(path, buf.getvalue())


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None when matplotlib is not installed.

    Figures are optional: an experiment writes its results and table without them.
    """
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def claim_out_dir(out: Path, config: dict) -> None:
    """Make ``out`` the results folder of ``config``: refuse a file, or a folder holding
    results of another configuration (so a resumed run never mixes settings), then write
    ``config.json``.

    Raises:
        losslab.experiments.ExperimentError: naming what differs.
    """
    from . import ExperimentError

    if out.exists() and not out.is_dir():
        raise ExperimentError(f"--out {out} exists and is not a folder")
    cfg_path = out / "config.json"
    if cfg_path.exists():
        try:
            old = read_json(cfg_path)
        except ValueError:
            old = None
        if old != config:
            changed = sorted(k for k in config if not isinstance(old, dict) or old.get(k) != config[k])
            raise ExperimentError(f"{out} holds results of a different configuration (differs in: "
                                  f"{', '.join(changed) or 'format'}); use another --out")
    write_json(cfg_path, config)
