"""Training from a file leaves no copy of its rows outside the workdir: after a forget (and an
audit, which rereads the source), neither the Hugging Face cache nor the temp dir holds them."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sisa import config as config_lib
from tests.conftest import blobs, file_digests

FORGET = [5, 8]  # ids (rows 0 and 1 of the file): both in the train split

SCRIPT = textwrap.dedent("""
    import sys
    from sisa.cli import main
    from sisa.data import datasets

    csv, parquet, hfdir, cfg, w = sys.argv[1:]
    assert main(["train", "--workdir", w, "--config", cfg, "--dataset", csv]) == 0
    assert main(["forget", "--workdir", w, "5", "8"]) == 0
    assert main(["audit", "--workdir", w]) == 0
    datasets.load(parquet), datasets.load(hfdir)  # neither may copy rows into a cache either
""")


def _write_sources(tmp: Path):
    """blobs() as CSV, parquet and a save_to_disk directory, with an id column; the byte
    patterns of the forgotten rows: their CSV lines, their float64 cells (what an arrow cache
    of the CSV holds, column by column) and their float32 rows (what sisa keeps)."""
    import datasets as hf

    ds = blobs()
    cols = {"id": ds.ids, **{f"f{j}": ds.x[:, j].astype(np.float64) for j in range(ds.x.shape[1])}, "label": ds.y}
    lines = ["id," + ",".join(f"f{j}" for j in range(ds.x.shape[1])) + ",label"]
    lines += [",".join([str(i), *(repr(float(v)) for v in row), str(c)]) for i, row, c in zip(ds.ids, ds.x, ds.y)]
    (tmp / "d.csv").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table(cols), tmp / "d.parquet")
    hf.Dataset.from_dict(cols).save_to_disk(str(tmp / "hf"))
    rows = [int(np.flatnonzero(ds.ids == i)[0]) for i in FORGET]
    patterns = [lines[1 + r].encode() for r in rows]
    patterns += [ds.x[r].tobytes() for r in rows]
    patterns += [v.tobytes() for r in rows for v in ds.x[r].astype(np.float64)]
    return patterns


def _holding(root: Path, patterns) -> list[str]:
    found = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            found += [f"{p.relative_to(root)}: pattern {k}" for k, pat in enumerate(patterns) if pat in data]
    return found


def test_training_from_csv_then_forget_and_audit_copies_no_row_anywhere(tmp_path, tiny_cfg):
    src, cache, tmp = tmp_path / "src", tmp_path / "hf-home", tmp_path / "tmp"
    for d in (src, cache, tmp):
        d.mkdir()
    patterns = _write_sources(src)
    cfg = tmp_path / "run.toml"
    cfg.write_text(config_lib.dumps(tiny_cfg))
    w = tmp_path / "w"
    # datasets reads its cache location at import: point it here in a fresh process.
    env = {**os.environ, "HF_HOME": str(cache), "HF_DATASETS_CACHE": str(cache / "datasets"), "TMPDIR": str(tmp),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(src / "d.csv"), str(src / "d.parquet"), str(src / "hf"),
                           str(cfg), str(w)], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(cache.rglob("*.arrow")), "rows were copied into the Hugging Face cache"
    assert _holding(cache, patterns) == [] and _holding(tmp, patterns) == []
    assert _holding(w, patterns[2:4]) == []  # the workdir holds no forgotten row either (float32 rows)

    # An audit writes nothing in the workdir.
    import sisa

    before = file_digests(w), sorted(map(str, w.rglob("*")))
    assert sisa.audit(w)["clean"]
    assert (file_digests(w), sorted(map(str, w.rglob("*")))) == before
