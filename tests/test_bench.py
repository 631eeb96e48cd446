"""`make bench` keeps working: a smoke run of benchmarks/run.py at tiny sizes (no timing claims)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_run_writes_every_row(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--sizes", "64", "--tokens", "128",
         "--threads", "1", "--skip-train", "--skip-moe", "--no-tune-alloc", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["efficiency"][0]["rows"]
    assert {r["structure"] for r in rows} >= {"monarch", "btt_rank4", "low_rank_0.75", "kronecker"}
    for r in rows:
        assert r["fast_ms"] > 0 and r["ref_ms"] > 0 and 0 < r["roofline_ceiling"] <= 1.0
        assert r["breakdown"]["total_ms"] > 0
        assert r["status"].split()[0] in {"MET", "SHORT", "EQUAL"}
    assert "targets met" in proc.stdout
