"""`make bench` keeps working: a smoke run of benchmarks/run.py at tiny sizes (no timing claims)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_run_writes_every_row(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "EINSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--sizes", "64", "--tokens", "128",
         "--threads", "1", "--skip-train", "--skip-moe", "--no-tune-alloc", "--planner-budget", "0.2",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["efficiency"][0]["rows"]
    assert {r["structure"] for r in rows} == {"monarch", "btt_rank4", "low_rank_0.75", "kronecker"}
    for r in rows:
        assert r["fast_ms"] > 0 and r["ref_ms"] > 0 and r["roofline_ceiling"] > 0
        assert r["roofline_ceiling"] <= r["roofline_ceiling_gemm_only"]
        assert r["program"] in r["planner_times_ms"]
        assert r["status"] in {"MET", "SHORT"} and r["checks"]
        assert ("baseline_ms" in r) == (r["structure"] in {"monarch", "btt_rank4"})
    assert result["planner"] and (tmp_path / "cache").is_dir()  # the planner cached under the override
    assert "targets met" in proc.stdout and "MET" in proc.stdout or "SHORT" in proc.stdout


def test_accelerator_section_runs_its_code_on_the_cpu(tmp_path):
    """``make bench DEVICE=cuda``'s section, run on the CPU at tiny sizes: the code path a GPU runs
    (synchronised interleaved timing, bf16 autocast, same-width and equal-FLOPs stacks)."""
    out = tmp_path / "device.json"
    # plans from the cost estimate: what runs here is the GPU's code path, not the CPU's planner
    env = {**os.environ, "EINSEARCH_CACHE_DIR": str(tmp_path / "cache"), "EINSEARCH_PLANNER": "estimate"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--device", "cpu", "--device-section", "--quick",
         "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert {(r["d"], r["dtype"], r["structure"]) for r in res["layers"]} == {
        (d, t, s) for d in (256, 1024) for t in ("bfloat16", "float32") for s in ("monarch", "btt_rank4")}
    assert all(r["dense_ms"] > 0 and r["struct_ms"] > 0 and r["flops_ratio"] > 1 for r in res["layers"])
    models = res["training"]["models"]
    assert set(models) == {"dense", "monarch@same_width", "monarch@equal_flops", "btt_rank4@same_width",
                           "btt_rank4@equal_flops"}
    assert all(m["tokens_per_s"] > 0 for m in models.values())
    assert models["monarch@same_width"]["flop_saving"] > 1 and "met" in models["monarch@same_width"]
    assert "Training a GPT-like stack" in proc.stdout
