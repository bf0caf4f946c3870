"""`snncompile sweep`: the `sweep:` block (spec/sweep.py) and the Optuna study
(train/sweep.py) on a tiny spec with generated data (a trial takes about a
second)."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

pytest.importorskip("optuna")

from snncompile import load
from snncompile.cli import main
from snncompile.spec.errors import SpecError, UserError
from snncompile.train import sweep as sweeps

SPEC = """\
snncompile: 1
name: tiny
input: {{shape: [1, 6, 6], encoding: {{type: direct}}}}
steps: 4
defaults: {{beta: 0.9}}
layers:
  - type: flatten
  - {{type: linear, name: fc1, out_features: 16}}
  - {{type: leaky, name: lif1}}
  - {{type: linear, name: fc2, out_features: 10}}
  - {{type: leaky, name: lif2}}
loss: {{type: ce_rate}}
train:
  dataset: synthetic
  batch_size: 32
  epochs: 2
  optimizer: {{type: adam, lr: 0.01}}
  limit_train: 96
  limit_test: 64
  device: cpu
sweep:
  trials: 3
{sweep}"""

PARAMETERS = """\
  parameters:
    train.optimizer.lr: {loguniform: [1.0e-3, 5.0e-2]}
    layers.lif1.beta: {uniform: [0.5, 0.95]}
    layers.fc1.out_features: {int: [8, 24]}
    train.batch_size: {choice: [16, 32]}
"""


def write(tmp_path, sweep=PARAMETERS, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(SPEC.format(sweep=sweep))
    return path


def run(spec, out, **options):
    options.setdefault("compile", "none")
    options.setdefault("progress", False)
    return sweeps.sweep(spec, out=out, **options)


def states(result):
    return [row["state"] for row in result.rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 3-trial sweep run in one go: what the interrupted ones must end with."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = write(tmp)
    return run(spec, tmp / "out"), spec


# --------------------------------------------------------------------------- a sweep
def test_a_sweep_writes_a_study_a_run_per_trial_a_summary_and_a_plot(
    uninterrupted, capsys
):
    result, _ = uninterrupted
    out = result.out
    assert not result.interrupted
    assert result.metric == "test_accuracy" and result.direction == "maximize"
    trials = result.study.trials
    assert len(trials) == 3
    assert set(states(result)) <= {"complete", "pruned"}
    assert (out / "sweep.db").is_file() and (out / "sweep.png").stat().st_size > 0
    # each trial a normal run directory, trained with the trial's values
    for trial in trials:
        run_dir = out / f"trial-{trial.number:03d}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert (run_dir / "checkpoint.pt").is_file()
        spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
        params = trial.params
        assert spec["train"]["optimizer"]["lr"] == params["train.optimizer.lr"]
        assert spec["layers"][2]["beta"] == params["layers.lif1.beta"]
        assert spec["layers"][1]["out_features"] == params["layers.fc1.out_features"]
        assert spec["train"]["batch_size"] == params["train.batch_size"]
        assert spec.get("sweep") is None  # a plain spec
        assert 1e-3 <= params["train.optimizer.lr"] <= 5e-2
        assert 8 <= params["layers.fc1.out_features"] <= 24
        # the metric of each epoch went to Optuna (pruning reads it)
        reported = {h["epoch"]: h["test_accuracy"] for h in metrics["history"]}
        assert trial.intermediate_values == reported
        if trial.state.name == "COMPLETE":
            assert trial.value == metrics["test_accuracy"]
    # summary.csv: a row per trial, the best one marked
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2]
    assert list(rows[0])[:7] == [
        "trial",
        "state",
        "test_accuracy",
        "train.optimizer.lr",
        "layers.lif1.beta",
        "layers.fc1.out_features",
        "train.batch_size",
    ]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value)
    assert result.best["trial"] == best.number == result.study.best_trial.number
    assert [r["best"] for r in rows] == [
        str(r["trial"] == str(best.number)) for r in rows
    ]


def test_set_applies_to_every_trial(tmp_path, capsys):
    spec = write(tmp_path)
    out = tmp_path / "out"
    code = main(["sweep", str(spec), "--out", str(out), "--trials", "1",
                 "--compile", "none", "--quiet", "--set", "train.epochs=1",
                 "--set", "train.batch_size=64"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "--set train.batch_size=64: the sweep sets this field" in err
    run_spec = yaml.safe_load((out / "trial-000" / "spec.yaml").read_text())
    assert run_spec["train"]["epochs"] == 1
    assert run_spec["train"]["batch_size"] in (16, 32)  # the sweep's value wins


# --------------------------------------------------------------------------- resuming
def test_a_sweep_interrupted_between_trials_resumes_to_the_same_study(
    uninterrupted, tmp_path
):
    expected, spec = uninterrupted

    def stop_after_second(row):
        if row["trial"] == 1:
            raise KeyboardInterrupt

    first = run(spec, tmp_path / "out", on_trial=stop_after_second)
    assert first.interrupted and len(first.study.trials) == 2
    second = run(spec, tmp_path / "out")
    assert not second.interrupted
    assert len(second.rows) == 3 and "running" not in states(second)
    # seeded per trial, trained bit-reproducibly: the same trials as in one go
    assert [t.params for t in second.study.trials] == [
        t.params for t in expected.study.trials
    ]
    assert states(second) == states(expected)
    assert [t.value for t in second.study.trials] == [
        t.value for t in expected.study.trials
    ]


def test_a_trial_interrupted_mid_run_continues_from_its_checkpoint(
    uninterrupted, tmp_path, monkeypatch, capsys
):
    expected, spec = uninterrupted
    report = sweeps._Report.__call__

    def interrupt(self, epoch, entry):
        if self.trial.number == 1 and epoch == 1:
            raise KeyboardInterrupt  # as Ctrl-C after the epoch's checkpoint
        report(self, epoch, entry)

    monkeypatch.setattr(sweeps._Report, "__call__", interrupt)
    out = tmp_path / "out"
    first = run(spec, out, command=lambda folder: f"CONTINUE {folder}")
    err = capsys.readouterr().err
    assert first.interrupted
    assert states(first) == [states(expected)[0], "running"]
    assert "sweep interrupted after 1 of 3 trials; trial 1 continues" in err
    assert f"CONTINUE {out}" in err
    assert json.loads((out / "trial-001" / "metrics.json").read_text())["epochs"] == 1
    monkeypatch.setattr(sweeps._Report, "__call__", report)
    second = run(spec, out)
    assert "trial 1 (2/3), continuing" in capsys.readouterr().err
    assert states(second) == states(expected)
    metrics = json.loads((out / "trial-001" / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert [t.value for t in second.study.trials] == [
        t.value for t in expected.study.trials
    ]


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_in_a_trials_last_epoch_stops_the_sweep(
    uninterrupted, tmp_path, monkeypatch, capsys, signum
):
    """Ctrl-C (or SIGTERM) while trial 1's last epoch is saved: training
    finishes that epoch (nothing is left to resume), the sweep records the
    trial and stops there, as after a signal in any other epoch."""
    import signal

    expected, spec = uninterrupted
    report = sweeps._Report.__call__

    def interrupt(self, epoch, entry):
        if self.trial.number == 1 and epoch == self.epochs:
            signal.raise_signal(getattr(signal, signum))  # a real signal, once
        report(self, epoch, entry)

    monkeypatch.setattr(sweeps._Report, "__call__", interrupt)
    out = tmp_path / "out"
    again = ["sweep", str(spec), "--out", str(out), "--compile", "none", "--quiet"]
    assert main(again) == 130
    err = capsys.readouterr().err
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["state"] for r in rows] == states(expected)[:2]  # no trial 2
    assert "sweep interrupted after 2 of 3 trials. Continue with:" in err
    assert f"snncompile sweep {spec} --out {out} --compile none" in err
    metrics = json.loads((out / "trial-001" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and not metrics["interrupted"]
    monkeypatch.setattr(sweeps._Report, "__call__", report)
    second = run(spec, out)
    assert "2 of 3 trials finished already; continuing" in capsys.readouterr().err
    assert states(second) == states(expected)
    assert [t.value for t in second.study.trials] == [
        t.value for t in expected.study.trials
    ]


def test_a_signal_before_a_trial_is_pruned_stops_the_sweep(tmp_path, monkeypatch):
    """Ctrl-C while an epoch is saved, then the pruner stops the trial: the
    trial is recorded as pruned and the sweep stops (it does not go on)."""
    import signal

    import optuna

    spec = write(tmp_path)
    report = sweeps._Report.__call__

    def prune(self, epoch, entry):
        if self.trial.number == 0 and epoch == 1:
            signal.raise_signal(signal.SIGINT)
            raise optuna.TrialPruned("pruned for the test")
        report(self, epoch, entry)

    monkeypatch.setattr(sweeps._Report, "__call__", prune)
    result = run(spec, tmp_path / "out")
    assert result.interrupted
    assert states(result) == ["pruned"]


def test_the_cli_with_trials_2_then_4_ends_with_4_finished_trials(tmp_path, capsys):
    spec = write(tmp_path)
    out = tmp_path / "out"
    common = ["--out", str(out), "--compile", "none", "--quiet"]
    assert main(["sweep", str(spec), "--trials", "2", *common]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert lines[0].split()[:3] == ["trial", "state", "test_accuracy"]
    assert "best: trial " in printed.out and "(maximize test_accuracy)" in printed.out
    assert f"run directory: {out / 'trial-'}" in printed.out
    assert "Traceback" not in printed.err
    assert main(["sweep", str(spec), "--trials", "4", *common]) == 0
    err = capsys.readouterr().err
    assert "2 of 4 trials finished already; continuing" in err
    assert main(["sweep", str(spec), "--trials", "4", *common]) == 0
    assert "4 of 4 trials finished already; nothing to do" in capsys.readouterr().err
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert all(r["state"] in ("complete", "pruned") for r in rows)
    assert sorted(p.name for p in out.glob("trial-*")) == [
        f"trial-00{i}" for i in range(4)
    ]


# --------------------------------------------------------------------------- failures
def test_a_failed_trial_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    sweep = "  parameters:\n    train.optimizer.lr: {choice: [1.0e+300]}\n"
    spec = write(tmp_path, sweep=sweep)
    result = run(spec, tmp_path / "out", trials=2)
    err = capsys.readouterr()
    assert states(result) == ["failed", "failed"]
    assert all("training stopped" in row["note"] for row in result.rows)
    assert result.best is None and "best: none" in err.out
    assert "trial 0 failed: " in err.err and "training stopped" in err.err
    assert (tmp_path / "out" / "summary.csv").is_file()


def test_refusals(tmp_path):
    spec = write(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds notes.txt but no sweep"):
        run(spec, other)
    assert (other / "notes.txt").read_text() == "mine"
    plain = tmp_path / "plain.yaml"
    plain.write_text(SPEC.format(sweep="").replace("sweep:\n  trials: 3\n", ""))
    with pytest.raises(UserError, match="has no sweep: block"):
        run(plain, tmp_path / "out")
    # a sweep folder continues only the sweep it holds
    out = tmp_path / "out"
    run(spec, out, trials=1, overrides=["train.epochs=1"])
    changed = write(tmp_path, PARAMETERS.replace("0.5, 0.95", "0.6, 0.95"), "b.yaml")
    with pytest.raises(UserError, match="holds a sweep with another parameters"):
        run(changed, out, overrides=["train.epochs=1"])


# --------------------------------------------------------------------------- checks
def problems(tmp_path, sweep) -> list[str]:
    path = write(tmp_path, sweep=sweep)
    with pytest.raises(SpecError) as err:
        load(path)
    lines = path.read_text().splitlines()
    out = []
    for problem in err.value.problems:
        assert problem.file == str(path) and problem.line is not None
        out.append(f"{lines[problem.line - 1].strip()} | {problem.message}")
    return out


def test_a_bad_parameter_path_is_located_at_its_line(tmp_path):
    found = problems(
        tmp_path,
        "  parameters:\n"
        "    train.optimizer.lrr: {loguniform: [1.0e-4, 1.0e-2]}\n"
        "    layers.lif3.beta: {uniform: [0.5, 0.9]}\n"
        "    layers.1.beta: {uniform: [0.5, 0.9]}\n"
        "    layers.2.beta: {uniform: [0.5, 0.9]}\n"
        "    layers.lif1.beta: {uniform: [0.5, 0.9]}\n"
        "    sweep.trials: {int: [1, 2]}\n",
    )
    assert found == [
        (
            "train.optimizer.lrr: {loguniform: [1.0e-4, 1.0e-2]} | unknown field "
            "'lrr' (did you mean 'lr'?); valid fields: type, lr, betas, eps, "
            "weight_decay"
        ),
        (
            "layers.lif3.beta: {uniform: [0.5, 0.9]} | no item named 'lif3' in "
            "layers (did you mean 'lif2'?); names: flatten1, fc1, lif1, fc2, lif2"
        ),
        (
            "layers.1.beta: {uniform: [0.5, 0.9]} | unknown field 'beta' of a "
            "linear layer; valid fields: name, inputs, type, out_features, bias"
        ),
        (
            "layers.lif1.beta: {uniform: [0.5, 0.9]} | names the same field as "
            "'layers.2.beta' (layers[2].beta)"
        ),
        "sweep.trials: {int: [1, 2]} | sweep cannot be swept",
    ]


def test_a_bad_range_is_located_at_its_value(tmp_path):
    # the block's own form first ...
    found = problems(
        tmp_path,
        "  parameters:\n"
        "    train.optimizer.lr: {loguniform: [0.0, 1.0e-2]}\n"
        "    train.batch_size: {int: [64, 16]}\n"
        "    train.epochs: {unifrom: [1, 2]}\n"
        "    train.seed: {choice: []}\n",
    )
    assert found == [
        (
            "train.optimizer.lr: {loguniform: [0.0, 1.0e-2]} | a loguniform range "
            "needs low > 0, got 0.0 (use uniform for ranges that include 0)"
        ),
        (
            "train.batch_size: {int: [64, 16]} | the range [64, 16] is empty or one "
            "value: write [low, high] with low < high (one value: set the field "
            "instead)"
        ),
        (
            "train.epochs: {unifrom: [1, 2]} | unknown field 'unifrom' (did you "
            "mean 'uniform'?); valid fields: choice, uniform, loguniform, int"
        ),
        "train.seed: {choice: []} | must have at least 1 item, got 0",
    ]
    # ... then the values each field takes
    found = problems(
        tmp_path,
        "  parameters:\n"
        "    layers.lif1.beta: {uniform: [0.5, 1.5]}\n"
        "    layers.fc1.out_features: {uniform: [8, 24]}\n"
        "    train.seed: {choice: [1, -1]}\n",
    )
    assert found == [
        (
            "layers.lif1.beta: {uniform: [0.5, 1.5]} | the high end 1.5 is not a "
            "value of layers.lif1.beta: must be less than or equal to 1, got 1.5"
        ),
        (
            "layers.fc1.out_features: {uniform: [8, 24]} | the low end 8.0 is not a "
            "value of layers.fc1.out_features: expected an integer, got 8.0"
        ),
        (
            "train.seed: {choice: [1, -1]} | choice -1 is not a value of "
            "train.seed: must be greater than or equal to 0, got -1"
        ),
    ]


def test_the_metric_must_be_one_the_task_records(tmp_path):
    beta = "  parameters:\n    layers.lif1.beta: {uniform: [0.5, 0.9]}\n"
    found = problems(tmp_path, "  metric: test_mse\n" + beta)
    assert found == [
        (
            "metric: test_mse | test_mse is not measured for a classification "
            "task; choose among test_loss, test_accuracy, val_loss, val_accuracy"
        )
    ]
    found = problems(tmp_path, "  metric: val_accuracy\n" + beta)
    assert found == [
        (
            "metric: val_accuracy | val_accuracy needs a validation split: set "
            "train.val_fraction (e.g. 0.1) or a val file"
        )
    ]


def test_defaults_and_a_parameter_needs_one_kind(tmp_path):
    spec = load(write(tmp_path))
    from snncompile.spec.sweep import direction_of, metric_of

    assert (metric_of(spec), direction_of(spec)) == ("test_accuracy", "maximize")
    loss = load(write(tmp_path, "  metric: test_loss\n" + PARAMETERS, "l.yaml"))
    assert direction_of(loss) == "minimize"
    found = problems(
        tmp_path,
        "  parameters:\n    layers.lif1.beta: {uniform: [0.5, 0.9], choice: [0.9]}\n",
    )
    assert len(found) == 1 and "give exactly one of choice, uniform" in found[0]
