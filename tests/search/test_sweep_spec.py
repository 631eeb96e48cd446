"""Sweep specs (issue 11): fair learning rates (base_width, lr lists, --lr-check), widths per
structure and compute-matched widths, log-spaced logging, the run table, and inputs validated
before anything is written."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from einsearch.search.cli import main
from einsearch.search.costmodel import flops_per_token, match_width, width_candidates
from einsearch.search.runplan import format_lr_check, lr_check, run_table
from einsearch.search.spec import SweepSpec, load_spec
from einsearch.search.sweep import search
from einsearch.search.train import TrainConfig, build_model, count_forward_flops, log_spaced_steps

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from fake_runs import fake_train  # noqa: E402

FAST = {"steps": 20, "warmup_steps": 0, "log_every": 1}



# ------------------------------------------------------------------------------------------
# learning rates


def test_base_width_defaults_to_dense_smallest_width(fake_config):
    spec = SweepSpec(structures=["dense", "btt"], widths=[32, 16, 64], train=dict(FAST))
    assert spec.base_width() == 16
    assert {c.base_width for c in spec.configs()} == {16}
    # per-structure widths: dense's smallest, even when another structure goes lower
    spec = SweepSpec(structures=["dense", "btt"], widths={"dense": [32, 64], "btt": [16, 32]},
                     train=dict(FAST))
    assert spec.base_width() == 32 and {c.base_width for c in spec.configs()} == {32}
    # an explicit base_width wins, and the resolved spec round-trips without one
    spec = SweepSpec(widths=[16, 32], train={**FAST, "base_width": 64})
    assert {c.base_width for c in spec.configs()} == {64}
    assert "base_width" not in SweepSpec(widths=[16]).to_dict()["train"]


def test_several_lrs_each_trained(fake_config):
    spec = SweepSpec(structures=["dense"], widths=[16], lrs=[1e-3, 3e-3, 1e-2], train=dict(FAST))
    assert sorted(c.lr for c in spec.configs()) == [1e-3, 3e-3, 1e-2]


def test_learning_rates_per_structure(fake_config):
    spec = SweepSpec(structures=["dense", "btt", "monarch"], widths=[16], train=dict(FAST),
                     lrs={"dense": [1e-3], "default": [2e-3, 4e-3]})
    by = {}
    for c in spec.configs():
        by.setdefault(c.structure, []).append(c.lr)
    assert by == {"dense": [1e-3], "btt": [2e-3, 4e-3], "monarch": [2e-3, 4e-3]}
    assert spec.lrs_for("btt") == [2e-3, 4e-3]
    rows = {r["structure"]: r for r in run_table(spec)}
    assert rows["dense"]["lrs"] == [1e-3] and rows["btt"]["runs"] == 2
    assert SweepSpec(**spec.to_dict()).lrs == spec.lrs  # round-trips


@pytest.mark.parametrize("lrs, match", [
    ({"dense": [1e-3]}, r"no learning rates for structure\(s\) \['btt'\]"),
    ({"dense": [1e-3], "monarch": [1e-3], "default": [1e-3]}, r"lrs: 'monarch' is not one of"),
    ({"dense": [], "default": [1e-3]}, r"lrs.dense must not be empty"),
    ({"dense": [-1.0], "default": [1e-3]}, r"lrs.dense"),
    ([], r"lrs must not be empty"),
])
def test_bad_per_structure_learning_rates_are_named(lrs, match):
    with pytest.raises(ValueError, match=match):
        SweepSpec(structures=["dense", "btt"], widths=[16], lrs=lrs, train=dict(FAST))


def test_lr_check_centres_on_each_structures_own_lr(tmp_path, fake_config):
    spec = SweepSpec(structures=["dense", "btt"], widths=[16, 32, 64],
                     lrs={"dense": [3e-3], "btt": [9e-3]}, train={**FAST, "steps": 40})
    result = lr_check(spec, tmp_path, train_fn=_lr_sensitive_train, show_progress=False)
    rows = {r["name"]: r for r in result["structures"]}
    assert result["transferred_lr"] is None
    assert rows["btt"]["transferred_lr"] == 9e-3
    assert rows["btt"]["lrs"] == pytest.approx([3e-3, 9e-3, 2.7e-2])
    assert not rows["dense"]["flagged"] and not rows["btt"]["flagged"]  # both at their best
    text = format_lr_check(result)
    assert "0 of 2 structures flagged" in text and "x 0.333" in text


def _lr_sensitive_train(config, options=None, progress=None):
    """Fake trainer whose final held-out loss is lowest at 3e-3 for dense and 9e-3 for btt."""
    result = fake_train(config, progress)
    best = 9e-3 if config.structure == "btt" else 3e-3
    result.final_eval_loss = 1.0 + math.log(config.lr / best) ** 2
    return result


def test_lr_check_flags_structures_whose_best_lr_moved(tmp_path, fake_config):
    spec = SweepSpec(structures=["dense", "btt"], widths=[16, 32, 64], lrs=[3e-3],
                     train={**FAST, "steps": 40})
    result = lr_check(spec, tmp_path, train_fn=_lr_sensitive_train, show_progress=False)
    rows = {r["name"]: r for r in result["structures"]}
    assert result["transferred_lr"] == 3e-3 and len(result["lrs"]) == 3
    assert rows["dense"]["width"] == 32 and not rows["dense"]["flagged"]
    assert rows["btt"]["flagged"] and rows["btt"]["best_lr"] == pytest.approx(9e-3)
    assert result["steps"] == 10 and result["base_width"] == 16  # the sweep's, not the check's
    saved = json.loads((tmp_path / "lr_check" / "lr_check.json").read_text())
    assert saved["structures"][1]["flagged"] is True
    assert (tmp_path / "lr_check" / "results.sqlite").exists()
    assert not (tmp_path / "results.sqlite").exists()  # the sweep's own store is untouched
    text = format_lr_check(result)
    assert "FLAG" in text and "1 of 2 structures flagged" in text


# ------------------------------------------------------------------------------------------
# widths


def test_widths_per_structure(fake_config):
    spec = SweepSpec(structures=["dense", "btt"], widths={"dense": [16, 32], "btt": [32, 64, 128]},
                     train=dict(FAST))
    got = {(c.structure, c.width) for c in spec.configs()}
    assert got == {("dense", 16), ("dense", 32), ("btt", 32), ("btt", 64), ("btt", 128)}
    assert load_spec_roundtrip(spec) == spec


def load_spec_roundtrip(spec: SweepSpec) -> SweepSpec:
    return SweepSpec(**spec.to_dict())


@pytest.mark.parametrize("widths, match", [
    ({"dense": [16], "monarch": [32]}, "'monarch' is not one of the structures"),
    ({"dense": [16]}, r"no widths for structure\(s\) \['btt'\]"),
    ({"dense": [16], "btt": []}, "widths.btt must not be empty"),
    ({"dense": [0], "btt": [16]}, "widths.dense .*positive integer"),
])
def test_bad_per_structure_widths(widths, match):
    with pytest.raises(ValueError, match=match):
        SweepSpec(structures=["dense", "btt"], widths=widths)


def test_match_compute_needs_dense_widths():
    with pytest.raises(ValueError, match="no widths are given for dense"):
        SweepSpec(structures=["dense", "btt"], widths={"btt": [16]}, match_compute=True)


@pytest.mark.parametrize("structure", ["monarch", "low_rank", "btt", "tensor_train"])
def test_matched_widths_are_the_closest_in_log_flops(structure):
    spec = SweepSpec(structures=["dense", structure], widths=[16, 32, 64], match_compute=True)
    chosen = spec.widths_for(structure)
    candidates = width_candidates(64 * 8)
    for w_dense in (16, 32, 64):
        target = flops_per_token("regression", "dense", w_dense)
        best = min(candidates, key=lambda c: abs(math.log(
            flops_per_token("regression", structure, c) / target)))
        assert best in chosen
    # structured layers are cheaper per width: the matched widths reach further
    assert max(chosen) > 64 and spec.widths_for("dense") == [16, 32, 64]


def test_match_width_skips_unbuildable_candidates():
    def cost(w: int) -> float:
        if w % 64:
            raise ValueError("not a multiple of 64")
        return float(w * w)

    assert match_width(200.0 ** 2, cost, width_candidates(1024)) == 192
    assert match_width(1.0, cost, width_candidates(1024)) == 64
    assert match_width(1e12, cost, width_candidates(1024)) == 1024


@pytest.mark.parametrize("structure, width", [("dense", 16), ("monarch", 48), ("btt", 32),
                                               ("low_rank(0.5)", 64), ("btt_moe", 16),
                                               ("(0.5|0.25|0.25|0.25|0.5|0.25|0)", 32)])
def test_flops_per_token_is_the_trainers_ledger(structure, width):
    cfg = TrainConfig(task="regression", structure=structure, width=width, num_experts=2)
    task, model = build_model(cfg)
    x = task.batch(0, 4, torch.Generator().manual_seed(0))[0]
    ledger = 3.0 * count_forward_flops(model, x) / 4
    assert flops_per_token("regression", structure, width, {"num_experts": 2}) == ledger


@pytest.mark.parametrize("structure", ["dense", "low_rank", "monarch", "btt_moe"])
def test_flops_per_token_charlm_counts_every_token(structure):
    """An example is block_size tokens: the structured layers' share scales with all of them."""
    train = {"depth": 1, "block_size": 16, "num_experts": 2}
    cfg = TrainConfig(task="charlm", structure=structure, width=64, **train)
    task, model = build_model(cfg)
    x = task.batch(0, 2, torch.Generator().manual_seed(0))[0]
    ledger = 3.0 * count_forward_flops(model, x) / (2 * 16)
    assert flops_per_token("charlm", structure, 64, train) == ledger


def test_width_candidates_factor_well():
    c = width_candidates(1024)
    assert c[0] == 16 and c[-1] == 1024 and all(w % 16 == 0 for w in c)
    assert all(b / a <= 1.25 for a, b in zip(c, c[1:]) if a >= 64)


# ------------------------------------------------------------------------------------------
# log-spaced logging


@pytest.mark.parametrize("steps, n", [(1000, 20), (10, 8), (1, 5), (300, 2)])
def test_log_spaced_steps(steps, n):
    s = log_spaced_steps(steps, n)
    assert s == sorted(set(s)) and s[-1] == steps and s[0] >= 1 and len(s) <= n
    if steps >= n ** 2:  # long runs: about n points, evenly spread in log
        assert len(s) >= n - 2
        ratios = [b / a for a, b in zip(s[len(s) // 2:], s[len(s) // 2 + 1:])]
        assert not ratios or max(ratios) < 1.6 * min(ratios)


def test_log_points_validated_and_used():
    with pytest.raises(ValueError, match="log_points"):
        TrainConfig(log_points=1)
    cfg = TrainConfig(steps=100, log_points=6)
    assert cfg.log_steps() == log_spaced_steps(100, 6)
    assert TrainConfig(steps=60, log_every=25).log_steps() == [25, 50, 60]


# ------------------------------------------------------------------------------------------
# validation before anything is written


def test_missing_data_path_is_named_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["search", "--task", "charlm", "--data", "/nonexistent", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "/nonexistent" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("overrides, match", [
    ({"widths": [0]}, "widths"),
    ({"widths": [-16]}, "widths"),
    ({"structures": ["not_a_structure"]}, "not_a_structure"),
    ({"lrs": [0.0]}, "lrs"),
    ({"lrs": [-1e-3]}, "lrs"),
    ({"lrs": [float("nan")]}, "lrs"),
    ({"lrs": [float("inf")]}, "lrs"),
    ({"seeds": [-1]}, "seeds"),
    ({"seeds": [1.5]}, "seeds"),
    ({"steps": 0}, "steps"),
    ({"task": "charlm", "widths": [16, 200]}, "width 200"),
    ({"task": "charlm", "data": str(Path("/nonexistent/corpus.txt"))}, "--data"),
])
def test_bad_inputs_fail_before_anything_is_written(tmp_path, overrides, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        search("tiny", out, show_progress=False, **overrides)
    assert not out.exists()


def test_dry_run_prints_the_run_table_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["search", "--preset", "tiny", "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "FLOPs/token" in text and "base_width 16" in text
    rows = [line.split() for line in text.splitlines() if line.startswith(("dense ", "btt "))]
    assert [(r[0], int(r[1])) for r in rows] == [("dense", 16), ("dense", 32), ("btt", 16),
                                                   ("btt", 32)]
    assert not out.exists()


def test_seeds_option_overrides_the_preset_seeds(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["search", "--preset", "tiny", "--dry-run", "--seeds", "7", "9", "--out", str(out)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("dense ")]
    assert rows and all("7,9" in r for r in rows)
    assert not out.exists()


def test_a_run_that_does_not_fit_its_device_is_reported_before_it_starts():
    from einsearch.search.costmodel import TRAIN_BYTES_PER_PARAM, memory_per_run
    from einsearch.search.runplan import check_memory
    from einsearch.search.spec import load_spec

    spec = load_spec("tiny")
    need = check_memory(spec, 2**40, "cuda:0")
    _, model = build_model(TrainConfig(task="regression", structure="dense", width=32))
    params = sum(p.numel() for p in model.parameters())
    assert need["dense"] > TRAIN_BYTES_PER_PARAM * params  # weights, grads, moments + activations
    small = memory_per_run("regression", "dense", 32, {"batch_size": 32})
    assert memory_per_run("regression", "dense", 32, {"batch_size": 64}) > small
    assert memory_per_run("regression", "dense", 32, {"batch_size": 64, "precision": "bf16"}) < \
        memory_per_run("regression", "dense", 32, {"batch_size": 64})
    with pytest.raises(ValueError, match=r"needs about .* GiB .* cuda:0 has"):
        check_memory(spec, min(need.values()) - 1, "cuda:0")
    with pytest.raises(ValueError, match="shared by 4 runs"):
        check_memory(spec, int(max(need.values()) * 2), "cuda:0", runs_per_device=4)


def test_the_run_table_stays_aligned_with_long_structure_texts(tmp_path, capsys):
    long = "btt_moe(num_experts=4, top_k=1, router_gate=switch)"
    assert main(["search", "--preset", "tiny", "--dry-run", "--structures", "dense", long,
                 "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("structure "))
    rows = [line for line in lines if line.startswith(("dense ", long))]
    end = header.index("width") + len("width")
    assert len(rows) == 4 and all(row[:end].rstrip()[-2:].isdigit() and row[end] == " " for row in rows)


def test_structures_override_drops_the_preset_entries_of_structures_left_out(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("task: regression\nstructures: [dense, btt, low_rank]\n"
                    "widths: {dense: [16, 32], low_rank: [32, 64]}\nmatch_compute: true\nseeds: [0]\n"
                    "lrs: {dense: [0.01], low_rank: [0.02], default: [0.03]}\ntrain: {steps: 10}\n")
    spec = load_spec(path, structures=["dense", "btt"])  # low_rank's entries go with it
    assert spec.structures == ["dense", "btt"] and set(spec.lrs) == {"dense", "default"}
    assert set(spec.widths) == {"dense"} and spec.lrs_for("btt") == [0.03]
    with pytest.raises(ValueError, match="lrs: 'dnse' is not one of the structures"):
        load_spec(path, structures=["dense", "btt"], lrs={"dnse": [0.1]})  # an override's own typo
