"""The training recipe (docs/design.md section 5): settings in each run's identity and in the
report, and the expert diagnostics of mixture-of-experts runs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from einsearch.search.config import TrainConfig
from einsearch.search.report import write_report
from einsearch.search.spec import SweepSpec
from einsearch.search.store import ResultStore
from einsearch.search.sweep import run_sweep
from einsearch.search.train import build_model, make_optimizer, train

TINY_LM = dict(task="charlm", width=64, base_width=64, steps=12, batch_size=4, block_size=32, depth=1,
               log_every=4, eval_batches=1, warmup_steps=2, num_experts=4)


def test_moe_settings_stay_out_of_runs_without_experts():
    dense = TrainConfig(structure="monarch")
    assert dataclasses.replace(dense, router_lr="plain").run_id() == dense.run_id()
    assert dataclasses.replace(dense, router_init="normal").run_id() == dense.run_id()
    assert dataclasses.replace(dense, router_gate="switch").run_id() == dense.run_id()
    for field, value in (("aux_loss_weight", 0.1), ("top_k", 1)):  # a study's MoE axis reuses dense's runs
        assert dataclasses.replace(dense, **{field: value}).run_id() == dense.run_id()
        assert dataclasses.replace(TrainConfig(), **{field: value}).run_id() == TrainConfig().run_id()
    assert dataclasses.replace(dense, dense_norm=False).run_id() == dense.run_id()  # monarch has no dense layer
    moe = TrainConfig(structure="btt_moe", num_experts=4)
    assert dataclasses.replace(moe, router_lr="plain").run_id() != moe.run_id()
    assert dataclasses.replace(moe, aux_loss_weight=0.1).run_id() != moe.run_id()
    assert dataclasses.replace(moe, router_gate="switch").run_id() != moe.run_id()
    assert dataclasses.replace(moe, router_gate="switch").structure_config().router_gate == "switch"
    assert dataclasses.replace(TrainConfig(), dense_norm=False).run_id() != TrainConfig().run_id()
    for field, value in (("beta2", 0.95), ("grad_clip", 1.0)):
        assert dataclasses.replace(dense, **{field: value}).run_id() != dense.run_id()


@pytest.mark.parametrize("field, value, message", [
    ("router_lr", "fast", "one of mup, plain"), ("router_init", "ones", "one of auto, zero, normal"),
    ("router_gate", "soft", "one of topk, switch"),
    ("beta2", 1.0, "[0, 1)"), ("grad_clip", -1.0, "non-negative"), ("dense_norm", 1, "True or False"),
    ("depth_mup", True, "setting of the GPT tasks"),
])
def test_bad_recipe_settings_are_named(field, value, message):
    with pytest.raises(ValueError, match=field) as err:
        TrainConfig(**{field: value})  # the regression task (no GPT)
    assert message in str(err.value)


def test_recipe_settings_reach_the_model_and_optimizer():
    cfg = TrainConfig(**{**TINY_LM, "structure": "moe", "dense_norm": False, "beta2": 0.95, "depth_mup": True,
                         "qk_norm": False, "router_init": "zero"})
    _, model = build_model(cfg)
    block = model.blocks[0]
    assert block.branch_scale == pytest.approx(3 ** 0.5) and isinstance(block.attn.q_norm, torch.nn.Identity)
    assert not block.attn.q.einsum_norm  # FFN-MoE's dense attention layers: plain, as dense_norm says
    assert int(torch.count_nonzero(block.mlp.router.weight)) == 0 and block.mlp.router_lr == "mup"
    opt, _ = make_optimizer(model, cfg)
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)
    clipped = train(dataclasses.replace(cfg, grad_clip=1e-3, steps=4))
    assert clipped.status == "finished"


def test_moe_runs_record_expert_load_and_the_report_shows_it(tmp_path):
    spec = SweepSpec(task="charlm", structures=["dense", "btt_moe", "moe"], widths=[64], seeds=[0], lrs=[3e-3],
                     train={k: v for k, v in TINY_LM.items() if k not in ("task", "width")})
    run_sweep(spec, tmp_path, show_progress=False, report=False)
    with ResultStore(tmp_path / "results.sqlite") as st:
        metrics = st.metrics()
        moe_runs = [r for r in st.runs() if r.structure != "dense"]
        assert all(r.run_id in metrics for r in moe_runs)
        steps = metrics[moe_runs[0].run_id]
        assert sorted(steps) == [4, 8, 12]
        loads = [v for k, v in steps[12].items() if "/load/" in k and k.startswith("moe/blocks.0.attn.q/")]
        assert len(loads) == 4 and sum(loads) == pytest.approx(1.0)
    summary = write_report(tmp_path, n_bootstrap=0)
    assert set(summary["experts"]) == {"btt_moe", "moe"}
    for e in summary["experts"].values():
        assert e["experts"] == 4 and 1.0 <= e["last"] <= 4.0 and 0 < e["entropy"] <= 1.0 + 1e-9
    md = (tmp_path / "report.md").read_text()
    assert "## Experts" in md and "dense layers carry the einsum norm" in md and "router_lr mup" in md
    assert (tmp_path / "expert_load.png").stat().st_size > 10_000


def test_a_collapsed_layer_is_warned_about(tmp_path):
    from einsearch.search.report.experts import expert_summary

    with ResultStore(tmp_path / "results.sqlite") as st:
        cfg = TrainConfig(**{**TINY_LM, "structure": "btt_moe"})
        result = train(dataclasses.replace(cfg, steps=16))
        assert [p.step for p in result.points] == [0, 4, 8, 12, 16]
        for i, p in enumerate(result.points[1:]):  # one layer's top expert takes 90% from the 2nd point on
            p.metrics["moe/blocks.0.mlp.fc/top_share"] = 0.9 if i >= 1 else 0.3
            p.metrics["moe/blocks.0.attn.q/top_share"] = 0.9 if i >= 2 else 0.3  # a third of the steps: not collapsed
        st.record(result)
        summary = expert_summary(st, st.runs())
    collapsed = summary["btt_moe"]["collapsed"]
    assert [c["layer"] for c in collapsed] == ["blocks.0.mlp.fc"]
    assert collapsed[0]["fraction_of_steps"] == pytest.approx(2 / 3)  # steps 8..16 of 4..16
    assert summary["btt_moe"]["layers_collapsed"] == 1 and json.dumps(summary)  # JSON-ready


@pytest.mark.parametrize(("steps", "above", "expected"), [
    ([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 800], [True] * 6 + [False] * 5, 63 / 799),  # 6 of 11 points
    ([0, 400, 800], [False, True, True], 0.5),
    ([0, 100, 800], [True, False, True], 100 / 800),
    ([5], [True], 1.0),
])
def test_collapse_counts_training_steps_not_log_points(steps, above, expected):
    """Log points are log-spaced: a layer above 2x its fair share until step 64 of 800 is above at
    6 of 11 points but balanced for 92% of training."""
    from einsearch.search.report.experts import fraction_of_steps

    assert fraction_of_steps(steps, above) == pytest.approx(expected)


def test_fraction_of_steps_refuses_mismatched_sequences():
    from einsearch.search.report.experts import fraction_of_steps

    with pytest.raises(ValueError, match="steps and above"):
        fraction_of_steps([0, 1], [True])


def test_expert_statistics_use_the_experts_the_structure_text_names(tmp_path):
    """'btt_moe(num_experts=2, top_k=1)' beside a num_experts=4 field: the layer has 2 experts, so
    the top share is read against a fair share of 1/2 (the field's 4 misread it as collapse)."""
    from einsearch.search.report.experts import expert_summary

    cfg = TrainConfig(**{**TINY_LM, "structure": "btt_moe(num_experts=2, top_k=1)", "steps": 8})
    assert cfg.num_experts == 4
    with ResultStore(tmp_path / "results.sqlite") as st:
        result = train(cfg)
        loads = [k for k in result.points[-1].metrics if k.startswith("moe/blocks.0.attn.q/load/")]
        assert len(loads) == 2
        st.record(result)
        summary = expert_summary(st, st.runs())
    s = summary["btt_moe(num_experts=2, top_k=1)"]
    assert s["experts"] == 2 and 1.0 <= s["last"] <= 2.0 and s["layers_collapsed"] == 0


def test_moe_variants_in_one_sweep_are_distinct_structures():
    cfg = TrainConfig(**{**TINY_LM, "structure": "btt_moe(num_experts=2, top_k=1)"})
    assert (cfg.structure_config().num_experts, cfg.structure_config().top_k) == (2, 1)  # the text wins
    other = TrainConfig(**{**TINY_LM, "structure": "btt_moe(num_experts=8, top_k=2)"})
    assert cfg.run_id() != other.run_id()
    assert train(dataclasses.replace(cfg, steps=4)).status == "finished"
