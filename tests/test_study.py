"""`vfnn study`: validation of the study file, the whole grid end to end, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import run_cli

from vfnn.study.config import load_study

TINY = """
[study]
name = "tiny"
datasets = ["digits"]
archs = ["fc:16x2"]
seeds = [0]
radii = [0.02, 0.05]
per_class = 1
timeout = 20
jobs = 2

[train]
epochs = 4
eval-size = 100
eval_pgd_steps = 3

[recipes.ce]
method = "ce"

[recipes."ce+nbc"]
reg = ["nbc"]
nbc-every = 2

[verifiers.milp]
threads = 1
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_plan_is_the_grid_of_train_command_lines(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, TINY.replace('seeds = [0]', 'seeds = [0, 1]')), out=tmp_path / "o")
    assert [(r.recipe, r.seed) for r in study.runs] == [("ce", 0), ("ce", 1), ("ce+nbc", 0), ("ce+nbc", 1)]
    nbc = study.runs[2]
    assert nbc.argv == ("--dataset", "digits", "--arch", "fc:16x2", "--epochs", "4", "--eval-size", "100",
                        "--eval-pgd-steps", "3", "--reg", "nbc", "--nbc-every", "2", "--seed", "0")
    assert nbc.run_dir == tmp_path / "o" / "runs" / "digits" / "fc-16x2" / "ce+nbc" / "s0"
    assert study.verifiers == {"milp": {"threads": 1}} and study.radii == [0.02, 0.05]


def test_overrides_per_arch_and_dataset(tmp_path: Path) -> None:
    text = TINY.replace('archs = ["fc:16x2"]', 'archs = ["fc:16x2", "fc:8x2"]') + '\n[train."fc:8x2"]\nepochs = 2\n'
    study = load_study(write(tmp_path, text), out=tmp_path)
    epochs = {r.arch: r.argv[r.argv.index("--epochs") + 1] for r in study.runs}
    assert epochs == {"fc:16x2": "4", "fc:8x2": "2"}


@pytest.mark.parametrize("change, message", [
    (("epochs = 4", "epoch = 4"), ":13: [train] epoch: not a vfnn train option (did you mean 'epochs'?)"),
    (('method = "ce"', 'method = "cee"'), ":18: [recipes.ce] method: Invalid value for '--method'"),
    (('reg = ["nbc"]', 'reg = ["nbcc"]'), "unknown regulariser 'nbcc'"),
    (("[verifiers.milp]", "[verifiers.milpp]"), "unknown verifier"),
    (("threads = 1", "threadz = 1"), "milp: unknown option 'threadz'"),
    (("per_class = 1", "per_class = 0"), ":8: [study] per_class: must be at least 1"),
    (("radii = [0.02, 0.05]", "radii = [0.02, 2]"), "[study] radii: radii lie in (0, 1]"),
    (("per_class = 1", "per-class = 1"), "[study] per-class: unknown key (did you mean 'per_class'?)"),
    (("epochs = 4", 'epochs = 4\nout = "x"'), "[train] out: is set by the study"),
    (("[study]", "[studdy]"), "[studdy]: unknown table (did you mean 'study'?)"),
    (("timeout = 20", "timeout = 20 20"), "not valid TOML"),
    (('datasets = ["digits"]', "datasets = []"), "[study] datasets: expected a non-empty list of strings"),
])
def test_each_mistake_is_one_line_naming_key_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      change: tuple[str, str], message: str) -> None:
    assert change[0] in TINY
    path = write(tmp_path, TINY.replace(change[0], change[1], 1))
    code, out, err = run_cli(["study", str(path), "--check"], capsys)
    assert code == 2, (out, err)
    assert message in err and str(path) in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "vfnn" / "studies").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_every_shipped_study_is_valid_and_names_its_file(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A shipped study that does not validate would fail only when someone runs it for hours; one
    that `vfnn study --help` does not name is one a user does not find."""
    study = load_study(path)
    assert study.name == path.stem and study.runs and study.radii and study.verifiers
    code, out, _ = run_cli(["study", "--help"], capsys)
    listed = re.sub(r"\s+", "", out.split("shipped", 1)[1]).split(":", 1)[1].split(")")[0].split(",")
    assert code == 0 and path.stem in listed, listed


def test_missing_file_lists_the_shipped_studies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["study", str(tmp_path / "nope.toml")], capsys)
    assert code == 2 and "no such file" in err and "quick" in err


def test_edited_recipe_is_not_reused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, TINY.replace("epochs = 4", "epochs = 1"))
    out = tmp_path / "o"
    code, _, err = run_cli(["study", str(path), "--out", str(out), "--phase", "train", "-q"], capsys)
    assert code == 0, err
    write(tmp_path, TINY.replace("epochs = 4", "epochs = 2"))
    code, _, err = run_cli(["study", str(path), "--out", str(out), "--phase", "train", "-q"], capsys)
    assert code == 2 and "was trained with phases=" in err


def test_run_from_an_older_vfnn_without_newer_options_is_reused(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import json

    path = write(tmp_path, TINY.replace("epochs = 4", "epochs = 1"))
    out = tmp_path / "o"
    assert run_cli(["study", str(path), "--out", str(out), "--phase", "train", "-q"], capsys)[0] == 0
    for cfg_path in out.glob("runs/**/config.json"):  # as written before --activation existed
        cfg = json.loads(cfg_path.read_text())
        del cfg["activation"], cfg["ramp_slope"], cfg["ramp_warmup"]
        cfg_path.write_text(json.dumps(cfg))
    code, _, err = run_cli(["study", str(path), "--out", str(out), "--phase", "train", "-q"], capsys)
    assert code == 0, err


def _study(path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vfnn", "study", str(path), "--out", str(out), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, limit: float = 300.0) -> None:
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"the study ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() - t0 < limit
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _comparable(report: dict) -> dict:
    """The report without wall-clock figures."""
    train = [{k: v for k, v in r.items() if k not in ("s_epoch", "x_ce")} for r in report["training"]]
    verify = [{k: v for k, v in r.items() if k not in ("mean_s", "median_s")} for r in report["verification"]]
    return {"training": train, "verification": verify}


PRUNED = TINY.replace('[recipes."ce+nbc"]\nreg = ["nbc"]\nnbc-every = 2\n',
                      '[recipes.ce-pruned]\nprune = { of = "ce", criterion = "nrs", rate = 0.25, rounds = 2, '
                      'rewind-epoch = 1 }\n').replace("radii = [0.02, 0.05]", "radii = [0.02]")


def test_a_pruned_recipe_is_the_last_round_of_vfnn_prune_of_its_base(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A recipe can be a pruned net (Li et al.): vfnn prune of another recipe's run, verified like any model,
    reused when done; a changed prune setting is an error, not a silent reuse."""
    path = write(tmp_path, PRUNED)
    study = load_study(path, out=tmp_path / "o")
    base, pruned = study.runs
    assert pruned.base == base and pruned.run_dir == tmp_path / "o" / "runs" / "digits" / "fc-16x2" / "ce-pruned" \
        / "s0" / "round-2"
    assert pruned.command[:2] == ["vfnn", "prune"] and pruned.command[-4:-2] == ["--rewind-epoch", "1"]
    code, _, err = run_cli(["study", str(path), "--out", str(tmp_path / "o"), "-q"], capsys)
    assert code == 0, err
    record = json.loads((pruned.prune_dir / "prune.json").read_text())
    assert [row["units"] for row in record["rounds_table"]] == [32, 24, 18]  # 25 % of the units per round
    report = json.loads((tmp_path / "o" / "report" / "study.json").read_text())
    assert {r["recipe"] for r in report["verification"]} == {"ce", "ce-pruned"}
    assert {r["recipe"]: r["neurons"] for r in report["training"]} == {"ce": 32, "ce-pruned": 18}
    code, _, err = run_cli(["study", str(path), "--out", str(tmp_path / "o"), "-q"], capsys)
    assert code == 0 and "2 of 2 models already trained" in err
    write(tmp_path, PRUNED.replace("rate = 0.25", "rate = 0.5"))
    code, _, err = run_cli(["study", str(path), "--out", str(tmp_path / "o"), "-q"], capsys)
    assert code == 2 and "was pruned with rate=0.25" in err


def test_prune_settings_left_out_take_vfnn_prunes_defaults(tmp_path: Path) -> None:
    text = PRUNED.replace('{ of = "ce", criterion = "nrs", rate = 0.25, rounds = 2, rewind-epoch = 1 }',
                          '{ of = "ce" }')
    pruned = load_study(write(tmp_path, text), out=tmp_path / "o").runs[1]
    assert pruned.pruning is not None and (pruned.pruning.criterion, pruned.pruning.rate, pruned.pruning.rounds,
                                           pruned.pruning.rewind_epoch) == ("nrs", 0.11, 12, 8)
    assert pruned.run_dir.name == "round-12"


@pytest.mark.parametrize("prune, message", [
    ('{ of = "nope" }', "name another, trained recipe"),
    ('{ of = "ce", criterion = "size" }', "criterion 'size'"),
    ('{ of = "ce", rate = 1.5 }', "rate lies in (0, 1)"),
    ('{ of = "ce", rounds = "3" }', "rounds: expected an integer"),
    ('{ of = "ce", typo = 1 }', "unknown key 'typo'"),
])
def test_a_malformed_prune_table_is_one_line_naming_it(tmp_path: Path, prune: str, message: str) -> None:
    from vfnn.study.config import StudyError

    text = PRUNED.replace('{ of = "ce", criterion = "nrs", rate = 0.25, rounds = 2, rewind-epoch = 1 }', prune)
    with pytest.raises(StudyError, match=re.escape(message)) as info:
        load_study(write(tmp_path, text), out=tmp_path / "o")
    assert "ce-pruned" in str(info.value) and "\n" not in str(info.value)


def test_sigkill_in_training_and_in_verification_then_resume_gives_the_same_report(tmp_path: Path) -> None:
    path = write(tmp_path, TINY)
    ref = subprocess.run([sys.executable, "-m", "vfnn", "study", str(path), "--out", str(tmp_path / "ref"), "-q"],
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    reference = json.loads((tmp_path / "ref" / "report" / "study.json").read_text())

    out = tmp_path / "killed"
    nbc_run = out / "runs" / "digits" / "fc-16x2" / "ce+nbc" / "s0"
    _kill_when(_study(path, out), lambda: (nbc_run / "checkpoint.pt").exists())  # mid-way through NBC training
    assert not (nbc_run / "summary.json").exists()
    results = out / "campaign" / "digits" / "results.jsonl"
    _kill_when(_study(path, out), lambda: results.exists() and len(results.read_text().splitlines()) >= 3)
    final = subprocess.run([sys.executable, "-m", "vfnn", "study", str(path), "--out", str(out), "-q"],
                           capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "already trained" in final.stderr
    resumed = json.loads((out / "report" / "study.json").read_text())
    assert _comparable(resumed) == _comparable(reference)
    keys = [json.loads(line)["key"] for line in results.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 2 * 2 * 10  # models x radii x images, each job once
    assert {r["recipe"] for r in resumed["verification"]} == {"ce", "ce+nbc"}
    for name in ("study.md", "study.csv"):
        assert "CROWN-LBP-verified %" in (out / "report" / name).read_text()
    assert all(0.0 <= r["lbp"] <= 1.0 for r in resumed["training"])  # recorded by training, not left out
    figures = {p.name for p in (out / "report" / "figures").iterdir()}
    assert {"unsat_vs_eps_digits_fc-16x2_milp.png", "cactus_digits_fc-16x2_milp.png",
            "unstable_per_layer_digits_fc-16x2.png"} <= figures
