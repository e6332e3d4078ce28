"""The command-line conventions every command keeps (validate._common.cli): every module a user runs answers
--help; the common flags have one name, type and list syntax everywhere; every flag says its default; flags the
user gives beat --quick; bad values exit with code 2 and one line."""
from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from validate._common import cli

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("signal_prop", "phase_diagram", "scan_snap", "scan_snap_sweep", "execution_manifold")
THEORY = ("theory.signal_prop", "theory.scan_snap", "theory.commutator")


@pytest.fixture(autouse=True)
def _in_a_temporary_directory(tmp_path, monkeypatch):
    """cli.parse creates --out (default runs/<command>) up front: keep that out of the checkout."""
    monkeypatch.chdir(tmp_path)


def _readme_modules() -> set[str]:
    return set(re.findall(r"python -m ((?:validate|theory|benchmarks)[\w.]*)", (REPO / "README.md").read_text()))


def _reference_actions() -> dict[str, argparse.Action]:
    """The common flags as add_common_flags declares them, every option on."""
    parser = argparse.ArgumentParser()
    cli.add_common_flags(parser, "reference", seeds=(0,), workers=1, threads=1, scheduler=True, fresh=True)
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def _parser(command: str) -> argparse.ArgumentParser:
    return importlib.import_module(f"validate.{command}").build_parser()


def test_readme_names_only_modules_that_exist():
    modules = _readme_modules()
    assert {f"validate.{c}" for c in COMMANDS} <= modules
    for module in modules:
        importlib.util.find_spec(module)  # raises for a package that is not there
        assert importlib.util.find_spec(module) is not None, module


@pytest.mark.parametrize("module", sorted({f"validate.{c}" for c in COMMANDS} | set(THEORY) | {"benchmarks"}
                                          | _readme_modules()))
def test_every_module_a_user_runs_answers_help(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ") and done.stderr == ""


@pytest.mark.parametrize("module", THEORY)
def test_theory_modules_refuse_an_unknown_flag_in_one_line(module):
    done = subprocess.run([sys.executable, "-m", module, "--no-such-flag"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "unrecognized arguments: --no-such-flag" in done.stderr.splitlines()[-1]


@pytest.mark.parametrize("command", COMMANDS)
def test_common_flags_have_one_name_type_and_syntax_everywhere(command):
    actions = {a.dest: a for a in _parser(command)._actions}
    reference = _reference_actions()
    for dest in ("out", "seeds", "seed", "quick", "device", "quiet", "update_figures"):
        assert dest in actions, f"{command} lacks --{dest.replace('_', '-')}"
    assert actions["out"].default == f"runs/{command}"
    for dest, ref in reference.items():
        if dest not in actions:
            continue
        action = actions[dest]
        assert action.option_strings == ref.option_strings, dest
        assert type(action) is type(ref) and action.nargs == ref.nargs, dest
        assert getattr(action.type, "__name__", None) == getattr(ref.type, "__name__", None), dest
        if dest not in ("out", "seeds", "workers", "quick"):  # defaults and preset texts are the command's own
            assert action.default == ref.default and action.help == ref.help, dest
    assert actions["quick"].help.endswith("flags given explicitly beat the preset (default off)")
    assert actions["seeds"].type is cli.seed_value and actions["seed"].type is cli.seed_value


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_help_with_its_default_and_lists_are_space_separated(command):
    for action in _parser(command)._actions:
        if action.dest == "help":
            continue
        assert action.help and "default" in action.help, f"{command}: {action.option_strings} says no default"
        if isinstance(action.default, (list, tuple)):
            assert action.nargs in ("+", "*") or isinstance(action.nargs, int), action.option_strings
        elif action.type not in (None, str) and not action.choices:
            with pytest.raises((argparse.ArgumentTypeError, ValueError, TypeError)):
                action.type("1,2")  # no flag parses a comma-separated list


def _argv_for(action: argparse.Action, value) -> list[str] | None:
    """Command-line words that give `value` to `action` explicitly, or None where it has no such spelling."""
    flag = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):
        return [flag if value else f"--no-{flag[2:]}"]
    if isinstance(action, argparse._StoreTrueAction):
        return [flag] if value else None
    if value is None:
        return None
    words = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    if not words:
        return None
    if action.nargs is None and len(words) != 1:
        return None
    return [flag, *words]


@pytest.mark.parametrize("command", COMMANDS)
def test_quick_applies_its_preset_and_explicit_flags_beat_it(command):
    module = importlib.import_module(f"validate.{command}")
    parser, quick = module.build_parser(), module.QUICK
    actions = {a.dest: a for a in parser._actions}
    assert set(quick) <= set(actions), f"{command}: QUICK names no flag for {set(quick) - set(actions)}"
    preset = cli.parse(parser, ["--quick"], quick=quick)
    for dest, value in quick.items():
        assert getattr(preset, dest) == (tuple(value) if isinstance(value, list) else value), dest
    checked = 0
    for dest, value in quick.items():
        default = actions[dest].default
        words = _argv_for(actions[dest], default)
        if words is None or default == value:
            continue
        args = cli.parse(parser, ["--quick", *words], quick=quick)
        assert getattr(args, dest) == (tuple(default) if isinstance(default, list) else default), dest
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("words", [["--seeds", "1", "1"], ["--seeds", "-1"], ["--seed", str(2 ** 63)],
                                   ["--seeds", "1,2"], ["--device", "gpu"], ["--no-such-flag"], ["--seeds"]])
def test_bad_common_values_exit_2_with_one_line(command, words, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.parse(_parser(command), words)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m validate.{command}: error: ")


def test_parse_folds_seed_into_seeds_and_seed_beats_the_quick_seeds():
    parser = cli.command_parser("demo", "a demonstration")
    cli.add_common_flags(parser, "demo", seeds=(1, 2, 3))
    quick = {"seeds": (1,)}
    assert cli.parse(parser, [], quick=quick).seeds == (1, 2, 3)
    assert cli.parse(parser, ["--quick"], quick=quick).seeds == (1,)
    assert cli.parse(parser, ["--quick", "--seed", "7"], quick=quick).seeds == (7,)
    assert cli.parse(parser, ["--quick", "--seeds", "4", "5"], quick=quick).seeds == (4, 5)


# The smallest run of each command that still goes through every stage (train, measure, judge, plot, write).
TINY_RUNS = {
    "signal_prop": ["--width", "16", "--depth", "2", "--networks", "2", "--probes", "1", "--n-tokens", "4",
                    "--settings", "normalized-ordered"],
    "phase_diagram": ["--grid", "2", "2", "--map-points", "4", "--depth", "1", "--width", "8", "--d-ff", "8",
                      "--steps", "4", "--batch", "4", "--test-size", "8", "--eval-every", "2", "--workers", "0",
                      "--models-per-batch", "4"],
    "scan_snap": ["--quick", "--steps", "10", "--theory-steps", "30", "--snap-steps", "20"],
    "scan_snap_sweep": ["--next-tokens", "2", "--lr-z", "1", "--ratios", "1", "2", "--seeds", "1", "2",
                        "--steps", "10", "--workers", "0"],
    "execution_manifold": ["--steps", "60", "--snapshot-every", "6", "--seeds", "0", "--n-layers", "1",
                           "--d-model", "16", "--n-heads", "2", "--batch-size", "32", "--null-draws", "20",
                           "--window", "4", "--difficulty-seeds", "0", "--lr", "3e-3", "--commutator-samples", "2",
                           "--sae-steps", "20", "--sae-examples", "256", "--sae-d", "16", "--sae-k", "4",
                           "--ablation-sizes", "1", "2"],
}
RECORD_KEYS = {"command", "argv", "package_version", "git_commit", "config", "versions", "timings_s", "metrics",
               "verdicts", "all_pass"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_writes_one_strict_json_record_and_leaves_figures_alone(command, tmp_path, monkeypatch,
                                                                              capsys):
    from validate._common import reporting

    figures = tmp_path / "figures"
    figures.mkdir()
    monkeypatch.setattr(reporting, "REPOSITORY_FIGURES", str(figures))
    argv = TINY_RUNS[command] + ["--quiet", "--out", str(tmp_path / "out")]
    assert importlib.import_module(f"validate.{command}").main(argv) == 0

    def refuse(token):
        raise AssertionError(f"{command}: non-strict JSON token {token}")

    record = json.loads((tmp_path / "out" / f"{command}.json").read_text(), parse_constant=refuse)
    assert RECORD_KEYS <= set(record) and record["command"] == command and record["argv"] == argv
    assert record["verdicts"] and all(set(row) == set(reporting.COLUMNS) for row in record["verdicts"])
    assert {row["verdict"] for row in record["verdicts"]} <= set(reporting.VERDICTS)
    assert record["all_pass"] == all(row["verdict"] != "FAIL" for row in record["verdicts"])
    assert record["timings_s"]["total"] > 0
    assert list(figures.iterdir()) == []  # a toy run never rewrites the repository's figures
    printed = capsys.readouterr().out
    assert printed.count("verdict") == 1 and "wrote" in printed.splitlines()[-1]  # one table, then the summary
