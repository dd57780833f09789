"""``vfnn train`` from the command line: help, a complete run, resume, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli


def test_help_states_nbc_formula_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    assert "-tanh(1 + c * z_ij(x) * z_ij(x'))" in out
    for text in ("--reg NAME[:WEIGHT]", "--schedule", "crown-ibp", "--radii", "--resume", "--nbc-neighbours",
                 "default weight", "[default: persistent]", "--nbc-every"):
        assert text in out, text


def test_complete_run_and_resume_of_a_finished_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "run"
    code, _, err = run_cli(["train", "--arch", "fc:16x2", "--schedule", "ce:1,ce+nbc:1", "--reg", "nbc:2",
                            "--eval-size", "50", "--eval-pgd-steps", "3", "--out", str(out_dir), "--quiet"], capsys)
    assert code == 0, err
    assert err == ""
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "model.pt", "model.onnx", "summary.json"):
        assert (out_dir / name).exists(), name
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["reg_weights"] == {"nbc": 2.0}
    # argv is the equivalent command line, options in the command's own order.
    assert cfg["argv"] == ["vfnn", "train", "--eval-size", "50", "--arch", "fc:16x2", "--reg", "nbc:2", "--schedule",
                           "ce:1,ce+nbc:1", "--eval-pgd-steps", "3", "--out", str(out_dir), "--quiet"]
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["phase"] for line in lines] == ["ce", "ce+nbc"]
    assert torch.load(out_dir / "model.pt", weights_only=True)["n_classes"] == 10
    code, out, _ = run_cli(["train", "--resume", str(out_dir)], capsys)
    assert code == 0 and "already complete" in out
    # Starting a new run over an existing one is refused with a hint.
    code, _, err = run_cli(["train", "--epochs", "1", "--out", str(out_dir), "--quiet"], capsys)
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1


def test_progress_output_when_not_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["train", "--arch", "fc:8", "--epochs", "1", "--eval-size", "20", "--eval-pgd-steps", "2",
                            "--out", str(tmp_path / "r")], capsys)
    assert code == 0
    assert "epoch 1/1" in err and "model.onnx" in err


@pytest.mark.parametrize("args, message", [
    (["--arch", "fc:abc"], "bad architecture 'fc:abc'"),
    (["--reg", "nbcc:1"], "unknown regulariser 'nbcc'"),
    (["--reg", "nbc:lots"], "is not a number"),
    (["--schedule", "ce:2,nbc:2"], "must start with a method"),
    (["--schedule", "ce:2", "--reg", "rs"], "--reg rs is not used by any --schedule phase"),
    (["--schedule", "ce:2", "--epochs", "3"], "--epochs and --schedule"),
    (["--method", "ibp", "--radii", "0.1,0.2", "--radius-weights", "1,2"], "strictly decreasing"),
    (["--nbc-layer-weights", "1,2,3,4,5"], "--nbc-layer-weights has 5 values"),
    (["--init", "missing.onnx"], "missing.onnx: no such file"),
    (["--dataset", "mnist", "--no-download"], "downloads are disabled"),
    (["--activation", "paramramp", "--init", "m.onnx"], "--activation and --init exclude each other"),
    (["--activation", "paramramp", "--epochs", "2", "--ramp-warmup", "2"], "--ramp-warmup 2"),
    (["--activation", "paramramp", "--ramp-slope", "1"], "--ramp-slope 1.0"),
    (["--ramp-noise", "0.01"], "need --activation paramramp"),
])
def test_errors_are_one_clear_line(args: list[str], message: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "o"), "-q"]
    code, _, err = run_cli(base + args, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfnn: error: ") and message in lines[0], err


def test_resume_rejects_new_training_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r").mkdir()
    code, _, err = run_cli(["train", "--resume", str(tmp_path / "r")], capsys)
    assert code == 2 and "no config.json" in err
    (tmp_path / "r" / "config.json").write_text("{}")
    code, _, err = run_cli(["train", "--resume", str(tmp_path / "r"), "--lr", "0.1"], capsys)
    assert code == 2 and "only --device" in err and "--lr" in err


def test_failed_start_leaves_no_run_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    code, _, err = run_cli(["train", "--nbc-layer-weights", "1", "--reg", "nbc", "--out", str(out), "-q"], capsys)
    assert code == 2 and "--nbc-layer-weights has 1 values" in err
    assert not (out / "config.json").exists()


def test_cli_resume_finishes_an_interrupted_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--arch", "fc:16x2", "--schedule", "ce:1,ce+nbc:1", "--eval-size", "40", "--eval-pgd-steps", "2",
            "-q"]
    assert run_cli(args + ["--out", str(tmp_path / "full")], capsys)[0] == 0
    # Interrupt after the first epoch: what a Ctrl-C between epochs leaves behind.
    from vfnn.train.config import TrainConfig
    from vfnn.train.trainer import Trainer

    cfg = TrainConfig.from_dict(json.loads((tmp_path / "full" / "config.json").read_text()))
    Trainer(cfg, tmp_path / "cut").run(stop_after=1)
    assert not (tmp_path / "cut" / "summary.json").exists()
    code, _, err = run_cli(["train", "--resume", str(tmp_path / "cut"), "-q"], capsys)
    assert code == 0, err

    def strip(path: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (path / "metrics.jsonl").read_text().splitlines()]

    assert strip(tmp_path / "cut") == strip(tmp_path / "full")


@pytest.mark.parametrize("damage", [b"", b"not a checkpoint", None])
def test_resume_from_a_damaged_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      damage: bytes | None) -> None:
    """A truncated, foreign or cut-off checkpoint.pt: exit 2 and one line saying what to do, never a traceback."""
    from vfnn.train.config import TrainConfig
    from vfnn.train.trainer import Trainer

    run = tmp_path / "run"
    Trainer(TrainConfig(arch="fc:16x2", eval_size=40, eval_pgd_steps=2), run).run(stop_after=1)
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200] if damage is None else damage)
    code, _, err = run_cli(["train", "--resume", str(run), "-q"], capsys)
    assert code == 2 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert "checkpoint.pt" in line and ("unreadable checkpoint" in line or "not a vfnn checkpoint" in line), line


def test_every_declared_option_is_a_flag_and_a_config_entry() -> None:
    """Generation from the registries: each option of each objective and regulariser has a flag, a help line,
    its default in config.json, and a value given on the command line reaches ``TrainConfig.options``."""
    from vfnn.study.config import parse_train_args
    from vfnn.train.cli import train
    from vfnn.train.components import option_flag
    from vfnn.train.config import TrainConfig, option_owners
    from vfnn.train.objectives import OBJECTIVES
    from vfnn.train.regularisers import REGULARISERS

    flags = {opt: p for p in train.params for opt in p.opts}
    owners = option_owners()
    assert set(owners) >= {"pgd", "trades", "nbc"}
    for cls in (*OBJECTIVES.values(), *REGULARISERS.values()):
        assert all(owner.name in owners for owner in cls.owners())
    defaults = TrainConfig().validate().to_dict()["options"]
    for name, cls in owners.items():
        for o in vars(cls)["options"]:
            flag = option_flag(name, o)
            assert flag in flags and flags[flag].help == o.help, flag
            assert name in defaults and o.name in defaults[name], (name, o.name)
            if o.type in (int, float):
                value = (o.default or 0) + 2
                cfg, argv = parse_train_args([flag, str(value)])
                assert cfg.options[name][o.name] == value and flag in argv, flag
    assert [*flags["--method"].type.choices] == [*OBJECTIVES]
    assert [*flags["--nbc-neighbours"].type.choices] == ["uniform", "adversarial", "both", "persistent"]


def test_a_regulariser_defined_here_gets_its_options_flags_and_help(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A new regulariser is one class: registered, it is on the command line, in --help and in config.json."""
    from vfnn.train import regularisers
    from vfnn.train.components import TrainOption

    class Shrink(regularisers.Regulariser):
        """squared weights times --shrink-power (a test's own regulariser)."""

        name = "shrink"
        default_weight = 0.25
        options = (TrainOption("power", float, 1.0, "Scale of the penalty.", minimum=0, strict=True),)

        def loss(self, model, batch, s):
            return self.settings["power"] * sum((p ** 2).sum() for p in model.parameters())

    monkeypatch.setitem(regularisers.REGULARISERS, "shrink", Shrink)
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0 and "--shrink-power" in out and "squared weights times" in out and "(default weight 0.25)" in out
    run = tmp_path / "r"
    code, _, err = run_cli(["train", "--arch", "fc:8", "--epochs", "1", "--reg", "shrink", "--shrink-power", "3",
                            "--eval-size", "20", "--eval-pgd-steps", "1", "--out", str(run), "-q"], capsys)
    assert code == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["options"]["shrink"] == {"power": 3.0} and cfg["reg_weights"] == {"shrink": 0.25}
    assert "shrink" in json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss_terms"]
    code, _, err = run_cli(["train", "--shrink-power", "0", "-q"], capsys)
    assert code == 2 and "--shrink-power must be > 0" in err


def test_config_json_of_earlier_versions_is_read() -> None:
    """Flat per-component keys (``nbc_every``, ``pgd_steps``), ``method`` + ``regs`` instead of ``phases``, and a
    config wrapped under ``config`` all become the same TrainConfig as today's shape."""
    from vfnn.train.config import Phase, TrainConfig

    flat = {"dataset": "digits", "phases": [{"method": "trades", "regs": ["nbc"], "epochs": 2}],
            "reg_weights": {"nbc": 2.0}, "pgd_steps": 4, "pgd_step_size": None, "trades_beta": 3.0,
            "nbc_neighbours": "both", "nbc_samples": 2, "nbc_steps": 5, "nbc_c": 0.5, "nbc_layer_weights": [1, 2],
            "nbc_every": 1, "eps": 0.1, "vfnn_version": "0.1.0", "argv": ["vfnn", "train"]}
    cfg = TrainConfig.from_dict(flat)
    assert cfg.options["pgd"] == {"steps": 4, "step_size": None} and cfg.options["trades"] == {"beta": 3.0}
    assert cfg.options["nbc"] == {"neighbours": "both", "samples": 2, "steps": 5, "c": 0.5,
                                  "layer_weights": (1.0, 2.0), "every": 1}
    assert TrainConfig.from_dict(cfg.validate().to_dict()) == cfg
    assert TrainConfig.from_dict({"config": flat}) == cfg
    old = TrainConfig.from_dict({"method": "ce", "regs": ["nbc:3", {"name": "rs"}], "epochs": 2})
    assert old.phases == [Phase("ce", ("nbc", "rs"), 2)] and old.reg_weights == {"nbc": 3.0, "rs": 0.5}
