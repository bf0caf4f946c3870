"""Training safeguards (issue 17): gradient clipping, mixed precision, warmup,
one-cycle and plateau schedules (the same in `snncompile train` and the
generated script), early stopping with best.pt, a stop at the first non-finite
loss, silent or saturated layer warnings, SIGTERM, and --resume with a changed
spec."""

import importlib.util
import inspect
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import snncompile
from snncompile import native
from snncompile.cli import main
from snncompile.codegen.render import render_script
from snncompile.spec.errors import UserError
from snncompile.train import loop, safeguards, schedules

SPEC = """\
snncompile: 1
name: tiny
input: {{shape: [1, 6, 6], encoding: {{type: rate}}}}
steps: 6
defaults: {{beta: 0.9}}
layers:
  - type: flatten
  - {{type: linear, name: fc1, out_features: 16}}
  - {{type: leaky, name: lif1{lif1}}}
  - {{type: linear, name: fc2, out_features: 10}}
  - {{type: leaky, name: lif2}}
loss: {{type: ce_rate}}
train:
  dataset: synthetic
  batch_size: 32
  epochs: {epochs}
  optimizer: {{type: adam, lr: {lr}}}
  limit_train: {limit_train}
  limit_test: 64
  device: cpu
{extra}"""


def spec_text(epochs=2, lr=0.01, limit_train=128, extra="", lif1=""):
    return SPEC.format(
        epochs=epochs, lr=lr, limit_train=limit_train, extra=extra, lif1=lif1
    )


def write(tmp_path, name="tiny.yaml", **options):
    path = tmp_path / name
    path.write_text(spec_text(**options))
    return path


def train(spec, **options):
    options.setdefault("compile", "none")
    options.setdefault("progress", False)
    return loop.train(spec, **options)


def weights(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)


def strict_json(path):
    """The file parsed as strict JSON (NaN, Infinity refused)."""

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


# --------------------------------------------------------------------------- schedules
SCHEDULES = {
    "cosine_warmup_epochs": "{type: cosine, eta_min: 0.001, warmup_epochs: 1}",
    "cosine_warmup_steps": "{type: cosine, warmup_steps: 5}",
    "step_warmup": "{type: step, step_size: 1, gamma: 0.5, warmup_steps: 3}",
    "step2_warmup_epochs": "{type: step, step_size: 2, warmup_epochs: 1}",
    "none_warmup": "{type: none, warmup_steps: 4}",
    "none_warmup_epochs": "{type: none, warmup_epochs: 1}",
    "one_cycle": "{type: one_cycle, pct_start: 0.25}",
    "one_cycle_tiny": "{type: one_cycle, pct_start: 0.01}",
    "plateau": "{type: plateau, factor: 0.5, patience: 0, metric: test_accuracy, "
    "min_lr: 0.001, cooldown: 1}",
    "plateau_warmup": "{type: plateau, warmup_epochs: 1, patience: 1}",
    "cosine": "{type: cosine}",
    "step": "{type: step, step_size: 2, gamma: 0.5}",
}


def schedule_spec(schedule: str):
    return snncompile.loads(spec_text(extra=f"  schedule: {schedule}\n"))


def import_script(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drive(scheduler, optimizer, per_epoch, epochs, observe, values):
    """The learning rate of every iteration; `observe(scheduler, value)` after
    each epoch."""
    rates = []
    for epoch in range(epochs):
        for _ in range(per_epoch):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        observe(scheduler, values[epoch])
    return rates


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_are_the_same_in_the_generated_script(tmp_path, name):
    """Iteration by iteration, bit for bit: the rendered make_scheduler (and
    Plateau) against snncompile train's."""
    spec = schedule_spec(SCHEDULES[name])
    path = tmp_path / "script.py"
    path.write_text(render_script(snncompile.analyze(spec)))
    module = import_script(path)
    per_epoch, epochs = 7, 5
    values = [0.5, 0.4, 0.45, 0.45, 0.3]
    lr = spec.train.optimizer.lr
    ours = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    reference = loop.make_scheduler(ours, spec, per_epoch, per_epoch * epochs)
    rates = drive(reference, ours, per_epoch, epochs, lambda s, v: s.observe(v), values)
    arguments = {"optimizer": theirs, "per_epoch": per_epoch}
    arguments["total"] = per_epoch * epochs
    plateau = None
    if hasattr(module, "Plateau"):
        plateau = arguments["plateau"] = module.Plateau()
    parameters = inspect.signature(module.make_scheduler).parameters
    scheduler = module.make_scheduler(**{k: arguments[k] for k in parameters})

    def observe(scheduler, value):  # as the script's training loop does it
        if plateau is not None and plateau.observe(value):
            for group, base in zip(theirs.param_groups, scheduler.base_lrs):
                group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)

    assert drive(scheduler, theirs, per_epoch, epochs, observe, values) == rates
    assert len(set(rates)) > 1


def test_warmup_is_linear_then_the_schedule():
    spec = schedule_spec("{type: step, step_size: 1, gamma: 0.5, warmup_steps: 4}")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = loop.make_scheduler(optimizer, spec, per_epoch=5, total=15)
    rates = drive(scheduler, optimizer, 5, 3, lambda s, v: None, [None] * 3)
    assert rates[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    assert rates[4:] == pytest.approx([0.01] + [0.005] * 5 + [0.0025] * 5)


def test_one_cycle_follows_torch():
    spec = schedule_spec("{type: one_cycle, pct_start: 0.3, div_factor: 10}")
    ours = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = loop.make_scheduler(ours, spec, per_epoch=10, total=40)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        theirs,
        max_lr=0.01,
        total_steps=40,
        pct_start=0.3,
        div_factor=10,
        final_div_factor=1e4,
        cycle_momentum=False,
    )
    for it in range(40):
        assert ours.param_groups[0]["lr"] == pytest.approx(
            theirs.param_groups[0]["lr"], rel=1e-9, abs=1e-15
        ), it
        ours.step(), theirs.step()
        scheduler.step(), reference.step()


def test_plateau_follows_torch_and_keeps_its_state(tmp_path):
    spec = schedule_spec(
        "{type: plateau, factor: 0.5, patience: 1, threshold: 0.01, cooldown: 1, "
        "min_lr: 0.002}"
    )
    ours = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = loop.make_scheduler(ours, spec, per_epoch=3, total=30)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(
        theirs, factor=0.5, patience=1, threshold=0.01, cooldown=1, min_lr=0.002
    )
    values = [1.0, 0.995, 0.999, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96]
    for value in values:
        for _ in range(3):
            ours.step()
            scheduler.step()
        scheduler.observe(value)
        reference.step(value)
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"])
    assert ours.param_groups[0]["lr"] == pytest.approx(0.002)
    # the state goes into a weights-only checkpoint and comes back
    torch.save(scheduler.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["plateau"]["scale"] == pytest.approx(0.2)
    again = loop.make_scheduler(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01), spec, 3, 30
    )
    again.load_state_dict(state)
    assert again.plateau.state() == scheduler.plateau.state()
    assert again.get_last_lr() == scheduler.get_last_lr()


def test_schedule_fields_are_checked():
    with pytest.raises(snncompile.SpecError, match="warmup_steps or warmup_epochs"):
        schedule_spec("{type: cosine, warmup_steps: 3, warmup_epochs: 1}")
    with pytest.raises(snncompile.SpecError, match="unknown field 'warmup_steps'"):
        schedule_spec("{type: one_cycle, warmup_steps: 3}")
    with pytest.raises(snncompile.SpecError, match="did you mean 'test_accuracy'"):
        snncompile.loads(spec_text(extra="  early_stopping: {metric: test_acc}\n"))


# --------------------------------------------------------------------------- clipping
def test_grad_clip_bounds_the_update_and_the_script_follows(tmp_path):
    """The clipped step of snncompile train equals the script's train_step (the
    same clip_grad_norm_ call), and the norm after clipping is the bound."""
    spec = snncompile.loads(spec_text(extra="  grad_clip: 0.05\n"))
    path = tmp_path / "script.py"
    path.write_text(render_script(snncompile.analyze(spec)))
    module = import_script(path)
    assert module.GRAD_CLIP == 0.05
    built, generated = snncompile.build(spec, seed=1), module.Net()
    generated.load_state_dict(built.state_dict())
    optimizer_b = loop.make_optimizer(built.parameters(), spec)
    optimizer_g = module.make_optimizer(generated)
    amp = safeguards.Precision("fp32", torch.device("cpu"), spec.train.grad_clip)
    loss_of, _ = loop.make_loss(built.graph)
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 2, 3, 4])
    for step in range(2):
        torch.manual_seed(step)
        module.train_step(generated, optimizer_g, x, y)
        torch.manual_seed(step)
        spk, mem = built(x)
        optimizer_b.zero_grad(set_to_none=True)
        norm = amp.step(loss_of(spk, mem, y), optimizer_b, built.parameters, False)
        assert norm > 0.05  # before clipping
        clipped = torch.nn.utils.get_total_norm([p.grad for p in built.parameters()])
        assert clipped == pytest.approx(0.05, rel=1e-4)
    for key, value in built.state_dict().items():
        assert torch.equal(generated.state_dict()[key], value), key


def test_standalone_script_with_clip_warmup_and_plateau_trains_like_train(tmp_path):
    """The whole run: the script's metrics equal snncompile train's (grad_clip,
    a warmup and a plateau schedule that reduces the rate during the run)."""
    extra = (
        "  grad_clip: 0.5\n"
        "  schedule: {type: plateau, metric: train_loss, patience: 0, factor: 0.5, "
        "threshold: 0.5, warmup_steps: 3}\n"
    )
    spec_path = write(tmp_path, epochs=3, extra=extra)
    spec = snncompile.load(spec_path)
    script = tmp_path / "tiny_script.py"
    script.write_text(render_script(snncompile.analyze(spec)))
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run(
        [sys.executable, str(script), "--out", str(work / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    theirs = json.loads((work / "out" / "metrics.json").read_text())
    ours = train(spec_path, out=tmp_path / "run", compile="plain")
    for a, b in zip(ours["history"], theirs["history"]):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert a[key] == b[key], key
    rates = [
        float(row.split(",")[4])
        for row in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
        if row.startswith("epoch")
    ]
    assert rates[-1] < 0.01  # the plateau reduced it


# --------------------------------------------------------------------------- precision
def test_bf16_trains_on_the_cpu(tmp_path, capsys):
    spec = write(tmp_path, epochs=1, extra="  precision: bf16\n")
    mode = "native" if native.problem() is None else "none"
    metrics = train(spec, out=tmp_path / "run", compile=mode)
    err = capsys.readouterr().err  # the kernels are kept (tests/test_bf16.py)
    assert "runs the model as generated" not in err and "note:" not in err
    assert metrics["compile"] == mode
    assert math.isfinite(metrics["test_loss"]) and metrics["test_accuracy"] > 0.1
    payload = weights(tmp_path / "run")
    assert all(v.dtype == torch.float32 for v in payload["model"].values())


def test_fp16_is_refused_on_the_cpu_before_any_work(tmp_path, capsys):
    spec = write(tmp_path, extra="  precision: fp16\n")
    code = main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "fp16 needs a CUDA device" in err and "bf16" in err
    assert not (tmp_path / "run").exists()


def test_fp16_scaler_state_goes_into_the_checkpoint():
    if not torch.cuda.is_available():
        amp = safeguards.Precision("bf16", torch.device("cpu"), None)
        assert amp.scaler is None and amp.state_dict() == {}
        return
    amp = safeguards.Precision("fp16", torch.device("cuda"), 1.0)
    state = amp.state_dict()
    assert state["scale"] > 0


# --------------------------------------------------------------------------- early stop
def test_early_stopping_keeps_the_best_checkpoint(tmp_path, capsys):
    # min_delta this large: only the first measurement counts as an improvement
    extra = "  early_stopping: {metric: test_loss, patience: 2, min_delta: 1000}\n"
    spec = write(tmp_path, epochs=6, extra=extra)
    metrics = train(spec, out=tmp_path / "run")
    err = capsys.readouterr().err
    assert (
        "early stopping after epoch 3: test_loss has not improved in 2 measurement"
        in err
    )
    assert metrics["epochs"] == 3
    assert metrics["stopped"] == {"reason": "early_stopping", "epoch": 3}
    assert metrics["best"]["best_epoch"] == 1
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    last = weights(tmp_path / "run")
    assert (best["epoch"], last["epoch"]) == (1, 3)
    first = metrics["history"][0]["test_loss"]
    assert best["early_stopping"]["best"] == pytest.approx(first)
    result = loop.evaluate(spec, checkpoint=tmp_path / "run" / "best.pt")
    assert result["test_loss"] == pytest.approx(first, rel=1e-6)
    # resumed with more patience (a change --resume applies), it goes on
    spec.write_text(spec.read_text().replace("patience: 2", "patience: 5"))
    more = train(spec, resume=tmp_path / "run")
    assert more["epochs"] == 6 and more["stopped"] is None


@pytest.mark.parametrize(
    "extra, message",
    [
        ("  early_stopping: {metric: test_mse}\n", "not measured for a classification"),
        ("  early_stopping: {metric: val_loss}\n", "needs a validation split"),
        ("  schedule: {type: plateau, metric: test_r2}\n", "train.schedule.metric"),
    ],
)
def test_a_metric_the_run_does_not_record_is_refused(tmp_path, extra, message):
    with pytest.raises(UserError, match=message):
        train(write(tmp_path, extra=extra), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- divergence
def test_a_diverging_run_stops_at_once_and_keeps_the_last_good_checkpoint(
    tmp_path, capsys
):
    spec = write(tmp_path, lr="1.0e+300")
    code = main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet",
                 "--compile", "none"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "at epoch 1, iteration 1/4" in err and "training stopped" in err
    assert "Traceback" not in err
    payload = weights(tmp_path / "run")  # the start: finite weights
    assert payload["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in payload["model"].values())
    metrics = strict_json(tmp_path / "run" / "metrics.json")
    assert metrics["stopped"]["reason"] == "non-finite"


def test_a_nan_loss_names_its_epoch_and_iteration(tmp_path, monkeypatch):
    make_loss = loop.make_loss
    calls = []

    def poisoned(graph, native=False):
        loss_of, records = make_loss(graph, native)

        def loss(spk, mem, targets, records=None, mask=None):
            value = loss_of(spk, mem, targets, records, mask)
            calls.append(1)
            # 4 training + 2 test batches an epoch: the 9th is epoch 2, iteration 3
            return value * float("nan") if len(calls) == 9 else value

        return loss, records

    monkeypatch.setattr(loop, "make_loss", poisoned)
    spec = write(tmp_path, epochs=3)
    with pytest.raises(
        safeguards.Diverged, match="loss is nan at epoch 2, iteration 3/4"
    ):
        train(spec, out=tmp_path / "run")
    payload = weights(tmp_path / "run")
    assert payload["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in payload["model"].values())
    metrics = strict_json(tmp_path / "run" / "metrics.json")
    assert len(metrics["history"]) == 1
    assert metrics["stopped"] == {"reason": "non-finite", "epoch": 2, "iteration": 3}


# --------------------------------------------------------------------------- firing
def test_a_silent_layer_is_warned_about(tmp_path, capsys):
    spec = write(tmp_path, epochs=1, lif1=", threshold: 1000.0")
    train(spec, out=tmp_path / "run")
    err = capsys.readouterr().err
    assert "warning: epoch 1: lif1 is silent (no spikes)" in err


def test_firing_problems_name_silent_and_saturated_layers():
    graph = snncompile.analyze(snncompile.load(
        os.path.join(os.path.dirname(__file__), "..", "specs", "regression_li.yaml")
    ))  # fmt: skip
    rates = {"lif1": 1.0, "readout": 0.0}
    assert safeguards.firing_problems(rates, graph) == [
        "lif1 is saturated (every neuron spikes at every step)"
    ]
    assert safeguards.firing_problems({"lif1": 0.0}, graph) == [
        "lif1 is silent (no spikes)"
    ]
    assert safeguards.firing_problems({"lif1": 0.3}, graph) == []


# --------------------------------------------------------------------------- SIGTERM
def test_sigterm_saves_a_checkpoint_that_resumes_bit_identically(tmp_path, capsys):
    spec = write(tmp_path, name="tiny spec.yaml")  # the hint quotes it for the shell
    before = signal.getsignal(signal.SIGTERM)  # earlier tests may have set one
    full = train(spec, out=tmp_path / "full")

    def terminate(epoch, iteration):
        if (epoch, iteration) == (1, 2):
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        train(spec, out=tmp_path / "cut", on_iteration=terminate)
    err = capsys.readouterr().err
    assert "SIGTERM received" in err and f"--resume {tmp_path / 'cut'}" in err
    assert f"snncompile train '{spec}' --resume {tmp_path / 'cut'}" in err
    payload = weights(tmp_path / "cut")
    assert (payload["epoch"], payload["step"]) == (0, 2)
    resumed = train(spec, resume=tmp_path / "cut")
    assert resumed["test_accuracy"] == full["test_accuracy"]
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert signal.getsignal(signal.SIGTERM) == before  # restored


def test_sigterm_to_the_command_exits_with_a_resume_hint(tmp_path):
    spec = write(tmp_path, epochs=1000, limit_train=64)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "snncompile", "train", str(spec), "--out",
               str(run), "--quiet", "--compile", "none",
               "--set", "train.seed=7"]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.json").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "SIGTERM received" in err and f"--resume {run}" in err
    assert "Traceback" not in err
    payload = weights(run)
    assert payload["epoch"] >= 1
    # the hint repeats --set: its command resumes (without, the seed differs)
    hint = err.split("with:\n", 1)[1].splitlines()[0].split()
    assert hint[:6] == ["snncompile", "train", str(spec), "--set", "train.seed=7",
                        "--resume"]  # fmt: skip
    epochs = str(payload["epoch"] + 1)
    assert main([*hint[1:], "--epochs", epochs, "--quiet", "--compile", "none"]) == 0
    assert weights(run)["epoch"] == payload["epoch"] + 1


# --------------------------------------------------------------------------- resume
def test_resume_refuses_changes_it_cannot_apply(tmp_path):
    spec = write(tmp_path, epochs=1)
    train(spec, out=tmp_path / "run")
    changed = spec.read_text().replace("lr: 0.01", "lr: 0.02")
    changed = changed.replace("batch_size: 32", "batch_size: 16")
    spec.write_text(changed)
    with pytest.raises(UserError) as info:
        train(spec, resume=tmp_path / "run", epochs=2)
    message = str(info.value)
    assert "train.optimizer.lr (0.01 -> 0.02)" in message
    assert "train.batch_size (32 -> 16)" in message
    assert "train.epochs" in message and "train.grad_clip" in message  # applicable
    assert weights(tmp_path / "run")["epoch"] == 1  # untouched


def test_resume_applies_the_changes_it_can(tmp_path, capsys):
    spec = write(tmp_path, epochs=1)
    train(spec, out=tmp_path / "run")
    text = spec.read_text().replace("epochs: 1", "epochs: 3")
    spec.write_text(text + "  grad_clip: 0.5\n  eval_every: 2\n")
    metrics = train(spec, resume=tmp_path / "run")
    err = capsys.readouterr().err
    assert "train.grad_clip (null -> 0.5)" in err and "train.eval_every (1 -> 2)" in err
    assert metrics["epochs"] == 3
    tested = [h["epoch"] for h in metrics["history"] if h["test_loss"] is not None]
    assert tested == [1, 2, 3]
    saved = snncompile.load(tmp_path / "run" / "spec.yaml")
    assert saved.train.grad_clip == 0.5 and saved.train.epochs == 3


def test_resume_with_the_original_flags_left_out(tmp_path):
    """A run started with --epochs / --limit-test flags resumes from its spec
    file alone (the command the interruption message prints)."""
    spec = write(tmp_path, epochs=5)
    train(spec, out=tmp_path / "run", epochs=1, limit_test=32, seed=3, limit_train=64)
    with pytest.raises(UserError, match="finished all 1 epochs"):
        train(spec, resume=tmp_path / "run")
    # the run's own spec.yaml (its flags written in) is the run's spec too
    run_spec = tmp_path / "run" / "spec.yaml"
    with pytest.raises(UserError, match="finished all 1 epochs"):
        train(run_spec, resume=tmp_path / "run")
    metrics = train(spec, resume=tmp_path / "run", epochs=2)
    assert metrics["seed"] == 3 and metrics["train_samples"] == 64
    assert metrics["epochs"] == 2 and metrics["test_samples"] == 32  # the run's


def test_scheduler_and_early_stopping_state_resume_exactly(tmp_path):
    extra = (
        "  schedule: {type: plateau, metric: train_loss, patience: 0, factor: 0.5, "
        "threshold: 0.5}\n  early_stopping: {metric: test_loss, patience: 5}\n"
    )
    spec = write(tmp_path, epochs=3, extra=extra)
    full = train(spec, out=tmp_path / "full")
    train(spec, out=tmp_path / "cut", epochs=2)
    resumed = train(spec, resume=tmp_path / "cut", epochs=3)
    assert resumed["test_loss"] == full["test_loss"]
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert a["scheduler"]["plateau"] == b["scheduler"]["plateau"]
    assert a["scheduler"]["plateau"]["scale"] < 1
    assert a["early_stopping"] == b["early_stopping"]
    assert schedules.higher_is_better("val_r2") and not schedules.higher_is_better(
        "test_mae"
    )
