"""The `ipb` command: --help everywhere, overrides after options, errors that name the key."""
import pytest

from ipb.cli import build_parser, main

COMMANDS = ["run", "config", "synth", "segment", "ingest", "splits", "train", "report", "predict"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and "usage: ipb " + cmd in capsys.readouterr().out


def test_parser_knows_every_command():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


def test_overrides_after_options(capsys):
    assert main(["config", "--profile", "paper", "train.epochs=3", "segmentation.well_mask=off"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "well_mask: 'off'" in out


def test_bad_key_is_a_clear_error(capsys, tmp_path):
    assert main(["splits", str(tmp_path), "--fold", "0", "train.epochz=1"]) == 2
    assert "train.epochz" in capsys.readouterr().err
    assert main(["splits", str(tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_synth_cli_writes_synthetic_wells(tmp_path, capsys):
    out = tmp_path / "wells"
    assert main(["synth", "--out", str(out), "--wells", "1", "--size", "256",
                 "synth.colonies_per_well=3"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert (out / "labels.csv").is_file() and (out / "SYNTHETIC.md").is_file()
