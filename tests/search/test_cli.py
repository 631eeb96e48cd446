"""The command line, run as a user runs it."""

import subprocess
import sys

import pytest

from einsearch.search.cli import main


def test_info_monarch_prints_the_right_numbers(capsys):
    assert main(["info", "monarch", "--d-in", "1024", "--d-out", "1024"]) == 0
    out = capsys.readouterr().out
    assert "65,536" in out
    lines = {line.split("  ")[0].strip(): line.split()[-1] for line in out.splitlines() if line.strip()}
    assert lines["omega (parameter sharing)"] == "0"
    assert lines["psi (rank exponent)"] == "1"
    assert lines["nu (compute exponent)"] == "0.5"
    assert lines["FLOPs / dense"] == "0.0625"


def test_info_theta_text_and_padding(capsys):
    assert main(["info", "(0.5|0.5|0|1|0|0|0)", "--d-in", "97", "--d-out", "64"]) == 0
    out = capsys.readouterr().out
    assert "cores swapped" in out and "padded to 98 x 64" in out


def test_info_unknown_structure_is_a_clean_error(capsys):
    assert main(["info", "foo"]) == 2
    err = capsys.readouterr().err
    assert "unknown structure 'foo'" in err and "Traceback" not in err


def test_info_bad_width_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["info", "dense", "--d-in", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_console_script_entry_point():
    proc = subprocess.run([sys.executable, "-m", "einsearch.search.cli", "info", "kronecker", "--d-in", "256"],
                          capture_output=True, text=True, check=True)
    assert "omega (parameter sharing)" in proc.stdout


@pytest.mark.parametrize("argv, message", [
    (["search", "--task", "nope", "--preset", "tiny"], "task must be one of"),
    (["search", "--preset", "nope"], "unknown preset 'nope'"),
    (["search", "--preset", "tiny", "--structures", "foo"], "unknown structure 'foo'"),
    (["report", "/nonexistent/dir"], "no results store"),
])
def test_search_and_report_errors_are_clean(argv, message, capsys, tmp_path):
    if argv[0] == "search":
        argv = argv + ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_report_options_reach_the_report(tmp_path, capsys):
    import json
    from pathlib import Path

    from einsearch.search.store import ResultStore

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_runs import make_result

    with ResultStore(tmp_path / "results.sqlite") as st:
        for name in ("dense", "btt"):
            for w in (32, 64, 128):
                st.record(make_result(name, w, steps=40))
    assert main(["report", str(tmp_path), "--loss", "train", "--bootstrap", "0", "--transient", "0.5",
                 "--offset", "none"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    st = summary["settings"]
    assert (st["loss"], st["n_bootstrap"], st["transient_fraction"], st["offset_requested"]) == ("train", 0, 0.5, None)
    btt = next(r for r in summary["structures"] if r["name"] == "btt")
    assert btt["compute_multiplier"] > 1 and btt["compute_multiplier_ci"] is None
    ref = btt["multiplier_by_loss"][1]["loss"]
    assert main(["report", str(tmp_path), "--bootstrap", "0", "--offset", "shared",
                 "--reference-loss", str(ref)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["loss"] == "eval" and summary["settings"]["offset_requested"] == "shared"
    for bad, message in ((["--bootstrap", "-1"], "non-negative integer"), (["--transient", "1"], "[0, 1)"),
                         (["--offset", "free"], "none, shared or a number"),
                         (["--reference-loss", "0"], "> 0")):
        with pytest.raises(SystemExit):
            main(["report", str(tmp_path), *bad])
        assert message in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--task", "charlm"]) == 2
    assert "no runs of task 'charlm'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--device", "cuda"], "CUDA is not available on this machine"),
    (["--device", "cuda:1"], "CUDA is not available on this machine"),
    (["--device", "tpu"], "--device must be one of auto, cpu, cuda, cuda:N"),
    (["--device", "cpu", "--precision", "fp16"], "fp16 needs a GPU"),
])
def test_a_device_or_precision_the_machine_lacks_fails_before_anything_is_written(argv, message, capsys,
                                                                                   tmp_path):
    import torch

    if torch.cuda.is_available():  # a GPU machine: the same logic is checked with fake device counts
        from einsearch.search.device import placement

        with pytest.raises(ValueError, match="CUDA is not available"):
            placement("cuda", gpus=0)
        return
    out = tmp_path / "out"
    assert main(["search", "--preset", "tiny", "--out", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_tiny_search_in_bf16_end_to_end(tmp_path, capsys):
    import json

    from einsearch.search.store import ResultStore

    out = tmp_path / "out"
    assert main(["search", "--preset", "tiny", "--precision", "bf16", "--device", "cpu", "--out", str(out),
                 "--quiet", "--checkpoint-every", "0"]) == 0
    with ResultStore(out / "results.sqlite") as st:
        runs = st.runs()
        assert runs and {r.precision for r in runs} == {"bf16"} and {r.device for r in runs} == {"cpu"}
        assert all(r.execution["threads"] >= 1 and r.execution["device_name"] for r in runs)
        assert all(p.elapsed_s is not None for pts in st.all_points().values() for p in pts)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["structures"] and "bf16" in (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "bf16" in printed and "device cpu" in printed


def test_device_placement_from_fake_gpu_counts():
    from einsearch.search.device import placement, resolve_device

    assert placement("auto", gpus=0) == ["cpu"] and placement("cpu", gpus=4) == ["cpu"]
    assert placement("auto", gpus=2) == ["cuda:0", "cuda:1"] == placement("cuda", gpus=2)
    assert placement("cuda:1", gpus=2) == ["cuda:1"]
    with pytest.raises(ValueError, match=r"2 CUDA device\(s\)"):
        resolve_device("cuda:2", gpus=2)


def test_compile_is_refused_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["search", "--preset", "tiny", "--device", "cpu", "--compile", "--out", str(out), "--quiet"]) == 2
    assert "--compile is for GPUs" in capsys.readouterr().err and not out.exists()



def test_set_reaches_every_run(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["search", "--preset", "tiny", "--out", str(out), "--dry-run", "--set", "steps=7",
            "--set", "train.dense_norm=false"]
    assert main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("dense ")]
    assert rows and all(row[4] == "7" for row in rows)  # the steps column
    assert not out.exists()


@pytest.mark.parametrize("setting, message", [
    ("lr=0.1", "'lr' is a sweep axis"),           # refused by the argument parser
    ("nope=1", "unknown field 'nope'"),
    ("steps", "expected FIELD=VALUE"),
    ("dense_norm=maybe", "dense_norm must be True or False, got 'maybe'"),  # by the spec's checks
    ("beta2=1.5", "beta2"),
])
def test_bad_settings_fail_before_anything_is_written(setting, message, tmp_path, capsys):
    out = tmp_path / "out"
    try:
        code = main(["search", "--preset", "tiny", "--out", str(out), "--set", setting])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
