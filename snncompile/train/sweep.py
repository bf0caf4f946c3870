"""`snncompile sweep`: a hyperparameter search over a spec's `sweep:` block
(spec/sweep.py), on Optuna.

The sweep folder holds the study (`sweep.db`, SQLite), one normal run
directory per trial (`trial-000`, `trial-001`, ...: trained by loop.train with
the trial's values as overrides), `summary.csv` and `sweep.png`. Running the
same command again continues the study: a trial that was interrupted (Ctrl-C,
SIGTERM, or a killed process) resumes from its run's last checkpoint, then new
trials are drawn until the study has `--trials` finished ones (complete,
pruned or failed). The sampler of trial k is seeded from (sweep.seed, k), so a
resumed sweep draws what an uninterrupted one would have (training on the CPU
is bit-reproducible, so the results it learns from are the same too, given one
fixed --compile mode: `auto` picks by timing).

Each epoch's metric is reported to Optuna; with `pruning` a trial worse than
the median of the earlier trials at that epoch stops (state pruned; its run
directory holds what it trained). A trial that fails with a user error (a
diverged loss, a value the network cannot take) is recorded as failed and the
sweep goes on. A Ctrl-C (or SIGTERM) that training takes without stopping (it
came in a trial's last epoch, or the pruner or an error ended the trial first)
stops the sweep once that trial is recorded.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..lower import optimize
from ..spec.errors import SpecError, UserError, first_line

STORAGE = "sweep.db"
SUMMARY = "summary.csv"
PLOT = "sweep.png"
SCALARS = (type(None), bool, int, float, str)  # what Optuna stores as a choice


# --------------------------------------------------------------------------- CLI
def configure_sweep(parser: argparse.ArgumentParser) -> None:
    from .command import _data_root, _positive

    parser.add_argument(
        "spec", metavar="SPEC", help="YAML or JSON spec with a sweep: block"
    )
    parser.add_argument(
        "--trials",
        type=_positive,
        metavar="N",
        help="finished trials the study should hold (default: sweep.trials); "
        "running the command again continues up to N",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="sweep folder (default runs/<name>-sweep-<time>): the study "
        f"({STORAGE}), a run directory per trial, {SUMMARY} and {PLOT}; the "
        "same DIR again continues the sweep",
    )
    _data_root(parser)
    parser.add_argument(
        "--compile",
        choices=optimize.MODES,
        nargs="?",
        const=optimize.DEFAULT_MODE,
        default=optimize.DEFAULT_MODE,
        help="compile mode of every trial (as for train; default "
        f"{optimize.DEFAULT_MODE})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_sweep(args: argparse.Namespace) -> int:
    from ..lower.optimize import tune_allocator

    tune_allocator()
    result = sweep(
        args.spec,
        out=args.out,
        trials=args.trials,
        data_root=args.data_root,
        compile=args.compile,
        progress=not args.quiet,
        download=not args.no_download,
        command=lambda out: _command(args, out),
    )
    return 130 if result.interrupted else 0


def _command(args: argparse.Namespace, out: Path) -> str:
    """The command that continues this sweep."""
    words = ["snncompile", "sweep", args.spec, "--out", str(out)]
    if args.trials:
        words += ["--trials", str(args.trials)]
    if args.data_root:
        words += ["--data-root", args.data_root]
    if args.compile != optimize.DEFAULT_MODE:
        words += ["--compile", args.compile]
    for assignment in getattr(args, "overrides", None) or []:
        words += ["--set", assignment]
    return shlex.join(words)


# --------------------------------------------------------------------------- sweep
@dataclass
class SweepResult:
    """What sweep() did: the sweep folder, the Optuna study, a row per trial
    (as summary.csv), the best row (None without a complete trial), and
    whether it stopped at an interruption."""

    out: Path
    study: object
    metric: str
    direction: str
    rows: list[dict] = field(default_factory=list)
    best: dict | None = None
    interrupted: bool = False


def sweep(
    spec,
    out=None,
    trials: int | None = None,
    data_root=None,
    compile: str = optimize.DEFAULT_MODE,
    progress: bool = True,
    download: bool = True,
    overrides=(),
    on_trial=None,
    command=None,
) -> SweepResult:
    """Run (or continue) the sweep of `spec` (a spec file, or a Spec with a
    `sweep` block) in the folder `out` until its study holds `trials` finished
    trials (default: sweep.trials). `overrides`: --set assignments applied to
    every trial before its own values. `on_trial(row)` is called after each
    trial (the row as in summary.csv). `command(out)`: the command line that
    continues the sweep, for the message at an interruption."""
    from ..spec.sweep import direction_of, metric_of
    from . import rundir

    optuna = _optuna()
    base = _trial_spec(spec, list(overrides))
    if base.sweep is None:
        raise UserError(
            f"{_name(spec)} has no sweep: block; add one, e.g.\n"
            "sweep:\n  trials: 8\n  parameters:\n"
            "    train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
            "    layers.lif1.beta: {uniform: [0.8, 0.99]}"
        )
    block = base.sweep
    total = trials or block.trials
    metric, direction = metric_of(base), direction_of(base)
    folder = _folder(out, base.name)
    lock = rundir.Lock(folder)
    previous = _handle_sigterm()
    try:
        study = _study(optuna, folder, base, metric, direction)
        result = SweepResult(folder, study, metric, direction)
        _note_overrides(spec, overrides, block)
        options = {
            "data_root": data_root,
            "compile": compile,
            "progress": progress,
            "download": download,
        }
        runner = _Runner(
            optuna, study, spec, list(overrides), base, folder, metric, options
        )
        done = runner.finished()
        if done:
            more = "continuing" if done < total else "nothing to do"
            print(
                f"sweep {folder}: {done} of {total} trials finished already; {more}",
                file=sys.stderr,
            )
        try:
            for trial in runner.orphans():  # interrupted earlier: continue them
                if runner.finished() >= total:
                    break
                runner.run(trial, total, resumed=True, on_trial=on_trial)
            while runner.finished() < total:
                study.sampler = _sampler(optuna, block, len(study.trials), total)
                runner.run(study.ask(), total, resumed=False, on_trial=on_trial)
        except KeyboardInterrupt:
            result.interrupted = True
        result.rows, result.best = summarize(study, folder, metric, direction, block)
        if result.interrupted:
            again = command(folder) if command else f"sweep(..., out={str(folder)!r})"
            running = runner.current
            kept = (
                f"; trial {running} continues from its last checkpoint"
                if running is not None
                else ""
            )
            print(
                f"sweep interrupted after {runner.finished()} of {total} trials"
                f"{kept}. Continue with:\n  {again}",
                file=sys.stderr,
            )
        return result
    finally:
        signal_restore(previous)
        lock.release()


def _name(spec) -> str:
    return str(spec) if not hasattr(spec, "name") else f"spec {spec.name}"


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError(
            "snncompile sweep needs Optuna: pip install 'optuna>=3.4'"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _trial_spec(spec, assignments: list[str]):
    """The spec (a file, loaded with the command line's --set, or a Spec) with
    `assignments` applied and validated; SpecError names each problem."""
    from ..spec.load import SourceMap, apply_overrides, load, validate_data
    from ..spec.schema import Spec

    if not isinstance(spec, Spec):
        return load(spec, overrides=assignments)
    if not assignments:
        return spec
    source = SourceMap(f"<spec {spec.name}>")
    data = apply_overrides(spec.model_dump(mode="json"), assignments, source)
    return validate_data(data, source)


def _note_overrides(spec, overrides, block) -> None:
    """A note where a --set gives a field that the sweep sets in every trial."""
    from ..spec.load import _cli_overrides, split_assignment
    from ..spec.schema import Spec

    given = list(overrides)
    if not isinstance(spec, Spec):
        given = [*_cli_overrides(str(spec)), *given]
    swept = {tuple(split_assignment(f"{p}=0")[0]) for p in block.parameters}
    for assignment in given:
        if tuple(split_assignment(assignment)[0]) in swept:
            print(
                f"note: --set {assignment}: the sweep sets this field in every "
                "trial (its value wins)",
                file=sys.stderr,
            )


def _folder(out, name: str) -> Path:
    """The sweep folder, created: a new default one, an empty one, or one
    holding a sweep (to continue)."""
    from . import rundir

    if out is None:
        return rundir.default_dir(f"{name}-sweep")
    path = rundir.prepare(out, None, name)
    held = rundir.entries(path)
    if held and STORAGE not in held:
        shown = ", ".join(held[:4]) + (
            f" and {len(held) - 4} more" if len(held) > 4 else ""
        )
        raise UserError(
            f"{path} holds {shown} but no sweep ({STORAGE}); choose another --out"
        )
    return path


def _study(optuna, folder: Path, spec, metric: str, direction: str):
    """The folder's study, created or loaded; UserError if it is the sweep of
    another spec, metric, direction or parameters."""
    storage = f"sqlite:///{(folder / STORAGE).resolve()}"
    key = {
        "metric": metric,
        "direction": direction,
        "parameters": {
            k: v.model_dump(exclude_none=True) for k, v in spec.sweep.parameters.items()
        },
    }
    try:
        names = optuna.get_all_study_names(storage)
        if names and spec.name not in names:
            raise UserError(
                f"{folder} holds the sweep of {', '.join(names)}, not of {spec.name}; "
                "choose another --out"
            )
        study = optuna.create_study(
            storage=storage,
            study_name=spec.name,
            direction=direction,
            pruner=_pruner(optuna, spec.sweep),
            load_if_exists=True,
        )
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's errors: one line
        raise UserError(
            f"cannot open the study {folder / STORAGE}: {first_line(err)}"
        ) from None
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", key)
        study.set_user_attr("spec", _plain_spec(spec))
        return study
    if json.loads(json.dumps(key)) != stored:
        changed = [k for k in key if json.loads(json.dumps(key[k])) != stored.get(k)]
        raise UserError(
            f"{folder} holds a sweep with another {' and '.join(changed)} "
            f"({', '.join(f'{k}: {json.dumps(stored.get(k))}' for k in changed)}); "
            "continue it with the sweep block it started with, or choose another --out"
        )
    changed = _changed(
        stored_spec := study.user_attrs.get("spec") or {}, _plain_spec(spec)
    )
    if stored_spec and changed:
        shown = ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
        print(
            f"warning: the spec differs from the one this sweep started with "
            f"({shown}): the new trials are not comparable with the earlier ones",
            file=sys.stderr,
        )
    return study


def _plain_spec(spec) -> dict:
    data = spec.model_dump(mode="json")
    data.pop("sweep", None)
    return json.loads(json.dumps(data))


def _changed(old, new, path: str = "") -> list[str]:
    """Dotted paths where two plain data trees differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in dict.fromkeys([*old, *new]):
            out += _changed(
                old.get(key), new.get(key), f"{path}.{key}" if path else key
            )
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out += _changed(a, b, f"{path}.{i}")
        return out
    return [] if old == new else [path or "<spec>"]


def _pruner(optuna, block):
    if not block.pruning:
        return optuna.pruners.NopPruner()
    # pruning starts once two trials are complete, from their first epoch on
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def _sampler(optuna, block, number: int, total: int):
    """Trial `number`'s sampler: seeded from (sweep.seed, number), so a resumed
    sweep draws as an uninterrupted one; random for the first half (at most 10)."""
    return optuna.samplers.TPESampler(
        seed=(block.seed * 1_000_003 + number) % 2**32,
        n_startup_trials=max(1, min(10, total // 2)),
    )


class _Runner:
    """Runs trials of a study as run directories <folder>/trial-NNN."""

    def __init__(self, optuna, study, spec, overrides, base, folder, metric, options):
        self.optuna, self.study, self.spec = optuna, study, spec
        self.overrides, self.base, self.folder = overrides, base, folder
        self.metric, self.options = metric, options
        self.current = None  # the trial running now (its number)

    def finished(self) -> int:
        states = self.optuna.trial.TrialState
        done = (states.COMPLETE, states.PRUNED, states.FAIL)
        return len(self.study.get_trials(deepcopy=False, states=done))

    def orphans(self):
        """Trials left running by an interrupted sweep (the folder is locked:
        no other process runs them)."""
        running = self.study.get_trials(
            deepcopy=False, states=(self.optuna.trial.TrialState.RUNNING,)
        )
        return [self.optuna.trial.Trial(self.study, t._trial_id) for t in running]

    def run(self, trial, total: int, resumed: bool, on_trial=None) -> None:
        from .loop import DeferredInterrupt, train

        optuna, states = self.optuna, self.optuna.trial.TrialState
        number = trial.number
        run_dir = self.folder / f"trial-{number:03d}"
        params = suggest(trial, self.base.sweep.parameters)
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        what = "continuing" if resumed else "starting"
        print(
            f"trial {number} ({self.finished() + 1}/{total}), {what}: {shown}",
            file=sys.stderr,
        )
        trial.set_user_attr("run_dir", run_dir.name)
        self.current = number
        report = _Report(trial, self.metric, self.base.sweep.pruning)
        # the trial's Ctrl-C and SIGTERM: one that training took without
        # stopping (in its last epoch, or before the pruner or an error ended
        # it) stops the sweep once the trial is recorded
        stop = DeferredInterrupt()
        state, value, note = None, None, ""
        try:
            from ..spec.sweep import assignment

            spec = _trial_spec(
                self.spec,
                [*self.overrides, *(assignment(k, v) for k, v in params.items()),
                 "sweep="],
            )  # fmt: skip
            report.epochs = spec.train.epochs
            metrics = _finished_run(run_dir, spec) if resumed else None
            if metrics is None:
                resume = (
                    run_dir
                    if resumed and (run_dir / "checkpoint.pt").exists()
                    else None
                )
                metrics = train(
                    spec,
                    out=run_dir,
                    resume=resume,
                    overwrite=resumed and resume is None,  # killed before a checkpoint
                    on_epoch=report,
                    stop=stop,
                    **self.options,
                )
            value = final_value(metrics, self.metric)
            if value is None:
                raise UserError(f"the run measured no finite {self.metric}")
            self.study.tell(trial, value)
            state = "complete"
        except optuna.TrialPruned as err:
            state, note = "pruned", str(err)
            trial.set_user_attr("note", note)
            self.study.tell(trial, state=states.PRUNED)
        except (UserError, SpecError) as err:
            note = first_line(err)
            trial.set_user_attr("error", note)
            self.study.tell(trial, state=states.FAIL)
            state = "failed"
        except KeyboardInterrupt:
            raise  # left running: the next sweep continues it
        except BaseException as err:  # a bug: recorded, then its traceback
            trial.set_user_attr("error", first_line(err))
            self.study.tell(trial, state=states.FAIL)
            raise
        self.current = None
        if note:
            trial_note = f"{state}: {note}"
        else:
            trial_note = f"{state}: {self.metric} {_fmt(value)}"
        best = _best(self.study)
        if best is not None:
            trial_note += f"; best so far: trial {best.number} ({_fmt(best.value)})"
        print(f"trial {number} {trial_note}", file=sys.stderr)
        rows, _ = rows_of(self.study, self.folder, self.metric)
        _write_csv(self.folder / SUMMARY, rows, self.metric, self.base.sweep)
        if on_trial is not None:
            on_trial(next(r for r in rows if r["trial"] == number))
        if stop.requested:
            raise KeyboardInterrupt


class _Report:
    """loop.train's on_epoch hook: the metric to Optuna; TrialPruned when the
    pruner says so (not after the last epoch: the trial is complete then)."""

    def __init__(self, trial, metric: str, pruning: bool):
        self.trial, self.metric, self.pruning = trial, metric, pruning
        self.epochs = None

    def __call__(self, epoch: int, entry: dict) -> None:
        value = entry.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), epoch)
        last = self.epochs is not None and epoch >= self.epochs
        if self.pruning and not last and self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(
                f"after epoch {epoch}, {self.metric} {_fmt(value)} is worse than "
                "the median of earlier trials"
            )


def suggest(trial, parameters) -> dict:
    """The trial's value of each swept field (drawn, or stored for a trial
    that is continued)."""
    values = {}
    for path, p in parameters.items():
        if p.kind == "uniform":
            values[path] = trial.suggest_float(path, *p.uniform)
        elif p.kind == "loguniform":
            values[path] = trial.suggest_float(path, *p.loguniform, log=True)
        elif p.kind == "int":
            values[path] = trial.suggest_int(path, *p.int)
        elif all(isinstance(c, SCALARS) for c in p.choice):
            values[path] = trial.suggest_categorical(path, list(p.choice))
        else:  # lists, mappings: chosen by their JSON text
            text = trial.suggest_categorical(path, [json.dumps(c) for c in p.choice])
            values[path] = json.loads(text)
    return values


def final_value(metrics: dict, metric: str) -> float | None:
    """The metric of the run's last epoch that measured it."""
    for entry in reversed(metrics.get("history") or []):
        value = entry.get(metric)
        if value is not None:
            return float(value) if math.isfinite(value) else None
    return None


def _finished_run(run_dir: Path, spec) -> dict | None:
    """metrics.json of a run that finished training (killed before the sweep
    recorded it), else None."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    stopped = metrics.get("stopped") or {}
    done = metrics.get("epochs", 0) >= spec.train.epochs or (
        stopped.get("reason") == "early_stopping"
    )
    return metrics if done and not metrics.get("interrupted") else None


def _best(study):
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


# --------------------------------------------------------------------------- signals
def _handle_sigterm():
    """SIGTERM stops the sweep as Ctrl-C does (training handles it itself)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        print("\nSIGTERM received: stopping", file=sys.stderr)
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def signal_restore(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- summary
def rows_of(study, folder: Path, metric: str) -> tuple[list[dict], int | None]:
    """A row per trial (trial, state, metric, each parameter, epochs, seconds,
    run, note) and the best trial's number (None without a complete one)."""
    best = _best(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = {"fail": "failed"}.get(t.state.name.lower(), t.state.name.lower())
        value = t.value if t.value is not None else None
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        run = t.user_attrs.get("run_dir", f"trial-{t.number:03d}")
        epochs = seconds = None
        try:  # the run's own figures (a continued trial's total, not its wall time)
            metrics = json.loads((folder / run / "metrics.json").read_text())
            epochs = metrics["epochs"]
            history = metrics["history"]
            seconds = sum(
                h.get("seconds", 0) + (h.get("eval_seconds") or 0) for h in history
            )
            seconds = seconds if history else None
        except (OSError, ValueError, KeyError, TypeError):
            epochs = max(t.intermediate_values) if t.intermediate_values else None
            if t.datetime_start is not None and t.datetime_complete is not None:
                seconds = (t.datetime_complete - t.datetime_start).total_seconds()
        note = t.user_attrs.get("error") or t.user_attrs.get("note", "")
        if state == "running":
            note = note or "interrupted: continues when the sweep is run again"
        rows.append(
            {
                "trial": t.number,
                "state": state,
                metric: value,
                **t.params,
                "epochs": epochs,
                "seconds": seconds,
                "run": str(folder / run),
                "best": best is not None and t.number == best.number,
                "note": note,
            }
        )
    return rows, None if best is None else best.number


def summarize(study, folder: Path, metric: str, direction: str, block):
    """Print the table and the best trial; write summary.csv and sweep.png."""
    rows, best_number = rows_of(study, folder, metric)
    _write_csv(folder / SUMMARY, rows, metric, block)
    print(table(rows, metric, list(block.parameters)))
    best = next((r for r in rows if r["trial"] == best_number), None)
    if best is not None:
        values = ", ".join(f"{k}={_fmt(best[k])}" for k in block.parameters)
        print(
            f"best: trial {best['trial']} ({direction} {metric}): "
            f"{_fmt(best[metric])} with {values}\n  run directory: {best['run']}"
        )
    else:
        print("best: none (no trial completed)")
    try:
        plot(rows, metric, direction, block, folder / PLOT)
    except OSError as err:
        print(f"warning: cannot write {folder / PLOT}: {err}", file=sys.stderr)
    print(f"summary: {folder / SUMMARY}, {folder / PLOT}")
    return rows, best


def _columns(metric: str, block) -> list[str]:
    return [
        "trial",
        "state",
        metric,
        *block.parameters,
        "epochs",
        "seconds",
        "run",
        "best",
        "note",
    ]


def _write_csv(path: Path, rows: list[dict], metric: str, block) -> None:
    from . import rundir

    columns = _columns(metric, block)
    try:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
                        for k, v in row.items()
                        if k in columns
                    }
                )
    except OSError as err:
        raise rundir.write_error(path, err) from None


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def table(rows: list[dict], metric: str, parameters: list[str]) -> str:
    """The summary as a text table (the best trial marked *)."""
    header = ["trial", "state", metric, *parameters, "epochs", "seconds", "note"]
    body = [
        [
            f"{r['trial']}{' *' if r['best'] else ''}",
            r["state"],
            _fmt(r[metric]),
            *(_fmt(r.get(p)) for p in parameters),
            _fmt(r["epochs"]),
            "-" if r["seconds"] is None else f"{r['seconds']:.1f}",
            r["note"] if len(r["note"]) <= 60 else r["note"][:57] + "...",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h)
              for i, h in enumerate(header)]  # fmt: skip
    line = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def plot(rows: list[dict], metric: str, direction: str, block, path: Path) -> None:
    """The metric per trial (with the best so far), and the metric against each
    parameter (log axes for loguniform ranges)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, NullFormatter

    from .plots import _save

    names = list(block.parameters)
    fig = Figure(figsize=(4.2 * (1 + len(names)), 3.8), layout="constrained")
    axes = fig.subplots(1, 1 + len(names), squeeze=False)[0]
    style = {"complete": ("o", "C0"), "pruned": ("x", "0.5")}
    ax = axes[0]
    for state, (marker, color) in style.items():
        some = [r for r in rows if r["state"] == state and r[metric] is not None]
        ax.scatter([r["trial"] for r in some], [r[metric] for r in some],
                   marker=marker, color=color, label=state)  # fmt: skip
    failed = [r["trial"] for r in rows if r["state"] == "failed"]
    for number in failed:
        ax.axvline(number, color="C3", lw=0.8, ls=":")
    complete = [r for r in rows if r["state"] == "complete" and r[metric] is not None]
    if complete:
        pick = max if direction == "maximize" else min
        xs, ys, best = [], [], None
        for r in sorted(complete, key=lambda r: r["trial"]):
            best = r[metric] if best is None else pick(best, r[metric])
            xs.append(r["trial"])
            ys.append(best)
        ax.step(xs, ys, where="post", color="C1", label="best so far")
        top = (
            next(r for r in complete if r["best"])
            if any(r["best"] for r in complete)
            else None
        )
        if top is not None:
            ax.scatter([top["trial"]], [top[metric]], marker="*", s=200, color="C1",
                       zorder=3)  # fmt: skip
    title = f"{metric} per trial ({direction})"
    if failed:
        title += f"; failed (dotted): {len(failed)}"
    ax.set(xlabel="trial", ylabel=metric, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    for ax, name in zip(axes[1:], names):
        parameter = block.parameters[name]
        categorical = parameter.kind == "choice" and not all(
            isinstance(c, (int, float)) and not isinstance(c, bool)
            for c in parameter.choice
        )
        labels = [_fmt(c) for c in parameter.choice] if categorical else None
        for state, (marker, color) in style.items():
            some = [r for r in rows if r["state"] == state and r[metric] is not None
                    and r.get(name) is not None]  # fmt: skip
            xs = [labels.index(_fmt(r[name])) if categorical else r[name] for r in some]
            ax.scatter(xs, [r[metric] for r in some], marker=marker, color=color)
        if categorical:
            ax.set_xticks(range(len(labels)), labels)
        if parameter.kind == "loguniform":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        if parameter.kind != "choice":  # the whole range, tried or not
            low, high = parameter.values
            pad = (high / low) ** 0.05 if parameter.kind == "loguniform" else None
            if pad is not None:
                ax.set_xlim(low / pad, high * pad)
            else:
                ax.set_xlim(low - 0.05 * (high - low), high + 0.05 * (high - low))
        ax.set(xlabel=name, ylabel=metric, title=f"{metric} vs {name}")
    _save(fig, path)
