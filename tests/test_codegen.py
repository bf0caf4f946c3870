"""Generated training scripts: fresh, self-contained, formatted, and computing
exactly what build() and `snncompile train` compute."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import linecache
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import snncompile
from snncompile.cli import main as cli
from snncompile.codegen.render import (
    render_forward,
    render_model,
    render_net,
    render_script,
)
from snncompile.ir import passes
from snncompile.train import loop

REPO = Path(__file__).resolve().parents[1]
GENERATED = REPO / "generated"
SPECS = sorted((REPO / "specs").glob("*.yaml"))
ALLOWED_IMPORTS = {
    "argparse",
    "json",
    "math",
    "time",
    "pathlib",
    "torch",
    "torchvision",
}
FORBIDDEN = ("snncompile", "pydantic", "jinja2", "yaml")
# what a script may import besides, by the spec's data source (README: "needs")
SOURCE_IMPORTS = {
    "tensors": {"os", "numpy", "h5py"},
    "image_folder": {"os"},
    "nmnist": {"os", "glob", "numpy", "tonic"},
    "shd": {"os", "numpy", "h5py", "tonic"},
    "ssc": {"os", "numpy", "h5py", "tonic"},
    "dvs_gesture": {"os", "glob", "numpy", "tonic"},
}


def _allowed(spec_path: Path) -> set[str]:
    label = snncompile.analyze(snncompile.load(spec_path)).dataset_label
    return ALLOWED_IMPORTS | SOURCE_IMPORTS.get(label, set())


def _script(spec_path: Path) -> Path:
    return GENERATED / f"{snncompile.load(spec_path).name}.py"


def _import(path: Path):
    """Import a script from its file under a unique module name."""
    name = f"_generated_{path.stem}_{abs(hash(str(path)))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def _render(spec) -> str:
    return render_script(snncompile.analyze(spec), spec.description)


def _input(graph, batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *graph.input_shape)
    if graph.sequence_input:
        shape = (graph.steps or 12, *shape)  # `steps: auto`: any T
    return torch.rand(shape, generator=gen)


def _twins(spec_path: Path):
    """The generated module's Net and build(spec), with the same weights."""
    spec = snncompile.load(spec_path)
    module = _import(_script(spec_path))
    generated = module.Net()
    built = snncompile.build(spec, seed=1)
    generated.load_state_dict(built.state_dict())
    return spec, module, generated, built


ids = [p.stem for p in SPECS]


# --------------------------------------------------------------------------- files
@pytest.mark.parametrize("spec_path", SPECS, ids=ids)
def test_generated_file_is_a_fresh_render(spec_path):
    spec = snncompile.load(spec_path)
    target = GENERATED / f"{spec.name}.py"
    assert target.is_file(), f"{target} is missing: run snncompile codegen specs/*.yaml"
    assert target.read_text(encoding="utf-8") == _render(spec)


@pytest.mark.parametrize("spec_path", SPECS, ids=ids)
def test_imports_only_torch_torchvision_and_stdlib(spec_path):
    tree = ast.parse(_script(spec_path).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in ("__import__", "exec", "eval")
    allowed = _allowed(spec_path)
    assert imported <= allowed, imported - allowed
    assert not imported & set(FORBIDDEN)


@pytest.mark.parametrize("spec_path", SPECS, ids=ids)
def test_model_part_is_the_source_build_executes(spec_path):
    spec = snncompile.load(spec_path)
    graph = snncompile.analyze(spec)
    net_text, _ = render_net(graph)
    built = snncompile.build(spec)
    module = sys.modules[type(built).__module__]
    executed = "".join(linecache.getlines(module.__file__))
    assert executed == render_model(graph)
    assert net_text.rstrip() + "\n" in executed
    assert net_text.rstrip() + "\n" in _script(spec_path).read_text(encoding="utf-8")


def test_scripts_are_formatted_and_lint_clean():
    files = [str(_script(p)) for p in SPECS]
    for command in (["format", "--check"], ["check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, *files],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_rendering_is_deterministic_across_processes():
    """Byte-identical output from a fresh interpreter with another hash seed."""
    code = (
        "import sys, snncompile\n"
        "from snncompile.codegen.render import render_script\n"
        "for path in sys.argv[1:]:\n"
        "    spec = snncompile.load(path)\n"
        "    text = render_script(snncompile.analyze(spec), spec.description)\n"
        "    sys.stdout.buffer.write(text.encode() + b'\\0')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, SPECS)],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        check=True,
    )
    texts = result.stdout.split(b"\0")[:-1]
    assert texts == [_script(p).read_bytes() for p in SPECS]


def test_package_import(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    for spec_path in SPECS:
        name = _script(spec_path).stem
        module = importlib.import_module(f"generated.{name}")
        assert isinstance(module.Net(), torch.nn.Module)


# --------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("spec_path", SPECS, ids=ids)
def test_same_spikes_and_membranes_as_build(spec_path):
    _, _, generated, built = _twins(spec_path)
    generated.eval(), built.eval()
    x = _input(built.graph, batch=3, seed=7)
    outputs = []
    with torch.no_grad():
        for net in (generated, built):
            torch.manual_seed(11)  # the same draws for rate encodings
            outputs.append(net(x, all_spikes=True))
    (spk_g, mem_g, rec_g), (spk_b, mem_b, rec_b) = outputs
    assert torch.equal(spk_g, spk_b)
    assert torch.equal(mem_g, mem_b)
    assert rec_g.keys() == rec_b.keys()
    for name in rec_b:
        assert torch.equal(rec_g[name], rec_b[name]), name
    assert mem_b.abs().sum() > 0, "a dead network compares nothing"


@pytest.mark.parametrize("spec_path", SPECS, ids=ids)
def test_same_training_steps_as_snncompile_train(spec_path):
    """Optimizer and loss of the script vs. those of snncompile.train; the same
    seed right before each forward gives the same dropout masks and encodings."""
    spec, module, generated, built = _twins(spec_path)
    graph = built.graph
    optimizer_g = module.make_optimizer(generated)
    optimizer_b = loop.make_optimizer(built.parameters(), spec)
    loss_of, need_records = loop.make_loss(graph)
    generated.train(), built.train()
    for step in range(2):  # the second step uses the optimizers' state
        x = _input(graph, batch=2, seed=step)
        y = torch.tensor([step, 3])
        if graph.task == "regression":  # float targets, one per output
            y = torch.rand(
                2, graph.num_classes, generator=torch.Generator().manual_seed(step)
            )
        torch.manual_seed(100 + step)
        loss_g, _, _ = module.train_step(generated, optimizer_g, x, y)
        torch.manual_seed(100 + step)
        if need_records:
            spk, mem, records = built(x, all_spikes=True)
        else:
            (spk, mem), records = built(x), None
        loss_b = loss_of(spk, mem, y, records)
        optimizer_b.zero_grad(set_to_none=True)
        loss_b.backward()
        optimizer_b.step()
        assert torch.equal(loss_g, loss_b.detach())
    before = snncompile.build(spec, seed=1).state_dict()
    after_g, after_b = generated.state_dict(), built.state_dict()
    assert after_g.keys() == after_b.keys()
    for key in after_b:
        assert torch.equal(after_g[key], after_b[key]), key
    assert any(not torch.equal(before[k], after_b[k]) for k in before), "no update"


# --------------------------------------------------------------------------- variants
# Specs that exercise every branch of the script template (data, schedules,
# optimizers, regularization, sequence inputs), rendered into a temp folder.
VARIANT = """\
snncompile: 1
name: {name}
input: {{shape: {shape}, encoding: {encoding}}}
steps: 6
defaults: {{beta: 0.8, threshold: 0.5}}
layers:
{layers}
decoding: {{type: {decoding}}}
loss: {loss}
train: {train}
"""
FLAT = """\
  - {type: flatten}
  - {type: linear, name: hidden, out_features: 24}
  - {type: leaky, name: lif_hidden}
  - {type: dropout, p: 0.2}
  - {type: linear, name: readout, out_features: 4}
  - {type: leaky, name: lif_out}
"""
CONV = """\
  - {type: conv2d, name: conv, out_channels: 4, kernel_size: 3}
  - {type: maxpool2d, kernel_size: 2}
  - {type: batchnorm2d}
  - {type: synaptic, alpha: 0.9}
  - {type: flatten}
  - {type: linear, out_features: 10}
  - {type: rleaky, recurrence: {type: one_to_one, V: 0.5}}
"""
VARIANTS = {
    "synthetic_step": {
        "shape": "[1, 4, 4]",
        "encoding": "{type: rate, gain: 0.9}",
        "layers": FLAT,
        "decoding": "rate",
        "loss": "{type: mse_count, correct_rate: 0.8, rate_regularization: "
        "{weight: 0.1, target: 0.2}}",
        "train": "{dataset: synthetic, batch_size: 16, limit_train: 80, limit_test: 40, "
        "normalize: {mean: [0.5], std: [0.25]}, optimizer: {type: sgd, lr: 0.2, "
        "momentum: 0.5}, schedule: {type: step, step_size: 2, gamma: 0.5}, "
        "drop_last: false, eval_every: 2, epochs: 3, seed: 3, device: cpu}",
    },
    "synthetic_cosine": {
        "shape": "[12]",
        "encoding": "{type: spikes}",
        "layers": FLAT,
        "decoding": "max_membrane",
        "loss": "{type: ce_max_membrane, rate_regularization: {weight: 0.05}}",
        "train": "{dataset: synthetic, batch_size: 16, limit_train: 64, limit_test: 40, "
        "optimizer: {type: adamw, lr: 0.01}, schedule: {type: cosine, eta_min: 0.001}, "
        "epochs: 2}",
    },
    "synthetic_plateau": {  # train.grad_clip, a warmup and a plateau schedule
        "shape": "[12]",
        "encoding": "{type: direct}",
        "layers": FLAT,
        "decoding": "rate",
        "loss": "{type: ce_rate}",
        "train": "{dataset: synthetic, batch_size: 16, limit_train: 64, limit_test: 32, "
        "optimizer: {type: adam, lr: 0.01}, grad_clip: 0.5, schedule: {type: plateau, "
        "metric: train_loss, patience: 0, threshold: 0.5, warmup_epochs: 1}, "
        "precision: bf16, epochs: 3}",
    },
    "synthetic_one_cycle": {
        "shape": "[12]",
        "encoding": "{type: rate}",
        "layers": FLAT,
        "decoding": "rate",
        "loss": "{type: ce_count}",
        "train": "{dataset: synthetic, batch_size: 16, limit_train: 48, limit_test: 32, "
        "optimizer: {type: sgd, lr: 0.1}, schedule: {type: one_cycle}, epochs: 2, "
        "early_stopping: {metric: test_accuracy, patience: 1}}",
    },
    "synthetic_delta": {
        "shape": "[12]",
        "encoding": "{type: delta, threshold: 0.05, off_spike: true}",
        "layers": FLAT,
        "decoding": "latency",
        "loss": "{type: ce_temporal}",
        "train": "{dataset: synthetic, batch_size: 16, limit_train: 48, limit_test: 40, "
        "optimizer: {type: adam, lr: 0.01}, schedule: {type: cosine}, epochs: 2}",
    },
    "cifar_conv": {
        "shape": "[3, 32, 32]",
        "encoding": "{type: latency, tau: 2.0}",
        "layers": CONV,
        "decoding": "mean_membrane",
        "loss": "{type: mse_membrane, on_target: 1.5, off_target: 0.2}",
        "train": "{dataset: cifar10, normalize: {mean: [0.49, 0.48, 0.45], "
        "std: [0.25, 0.24, 0.26]}, schedule: {type: step, step_size: 1}}",
    },
    "kmnist_direct": {
        "shape": "[1, 28, 28]",
        "encoding": "{type: direct}",
        "layers": FLAT.replace("out_features: 4", "out_features: 10"),
        "decoding": "rate",
        "loss": "{type: ce_count}",
        "train": "{dataset: kmnist, optimizer: {type: sgd, lr: 0.1, nesterov: true, "
        "momentum: 0.9}}",
    },
}


def _variant_spec(name: str):
    text = VARIANT.format(name=name, **VARIANTS[name])
    return snncompile.loads(text, file=f"{name}.yaml")


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    folder = tmp_path_factory.mktemp("variants")
    for name in VARIANTS:
        (folder / f"{name}.py").write_text(_render(_variant_spec(name)))
    return folder


def test_variants_are_formatted_lint_clean_and_self_contained(variants):
    files = sorted(str(p) for p in variants.glob("*.py"))
    assert len(files) == len(VARIANTS)
    for command in (["format", "--check"], ["check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, *files],
            check=False,
            cwd=REPO,  # the project's ruff settings
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    for path in files:
        tree = ast.parse(Path(path).read_text())
        names = {
            (n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in n.names
        }
        assert names <= ALLOWED_IMPORTS, (path, names)
    synthetic = (variants / "synthetic_step.py").read_text()
    assert "torchvision" not in synthetic and "--data-root" not in synthetic


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_model_matches_build(variants, name):
    spec = _variant_spec(name)
    module = _import(variants / f"{name}.py")
    built = snncompile.build(spec, seed=2)
    generated = module.Net()
    generated.load_state_dict(built.state_dict())
    generated.eval(), built.eval()
    x = _input(built.graph, batch=2, seed=5)
    torch.manual_seed(0)
    spk_g, mem_g = generated(x)
    torch.manual_seed(0)
    spk_b, mem_b = built(x)
    assert torch.equal(spk_g, spk_b) and torch.equal(mem_g, mem_b)


@pytest.mark.parametrize("name", ["synthetic_step", "synthetic_cosine"])
def test_synthetic_batches_match_snncompile_train(variants, name):
    """The script's data and input pipeline against snncompile/train/data.py."""
    from snncompile.train.data import load_split

    spec = _variant_spec(name)
    graph = snncompile.analyze(spec)
    module = _import(variants / f"{name}.py")
    norm = spec.train.normalize.model_dump() if spec.train.normalize else None
    for train in (True, False):
        limit = spec.train.limit_train if train else spec.train.limit_test
        split = load_split(graph, train, limit=limit, normalize=norm)
        inputs, labels = module.load_split(train, limit, torch.device("cpu"))
        assert torch.equal(labels, split.labels)
        torch.manual_seed(4)
        x_ref = split.batch(slice(0, 8))[0]
        torch.manual_seed(4)
        assert torch.equal(module.to_input(inputs[:8]), x_ref)


# --------------------------------------------------------------------------- scripts
BLOCKER = '''\
"""Test isolation: the generated script must run without snncompile & co."""
import importlib.abc
import sys

BLOCKED = {blocked!r}


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked in this test")
        return None


sys.meta_path.insert(0, Blocker())
'''


def _isolated(tmp_path: Path) -> dict:
    """Environment of a fresh interpreter where snncompile (editable-installed in
    site-packages), pydantic, jinja2 and yaml cannot be imported: PYTHONPATH holds
    only a sitecustomize.py that puts a blocking finder first on sys.meta_path;
    no user site, no inherited variables."""
    folder = tmp_path / "isolation"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(BLOCKER.format(blocked=FORBIDDEN))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    env.update(PYTHONPATH=str(folder), PYTHONNOUSERSITE="1", PYTHONHASHSEED="0")
    return env


def _assert_isolated(env: dict, cwd: Path) -> None:
    """In that environment torch imports and each FORBIDDEN module fails to."""
    code = (
        "import importlib, torch\n"
        f"for name in {FORBIDDEN!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        print('blocked', name)\n"
    )
    check = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert check.stdout.split("\n")[:-1] == [f"blocked {m}" for m in FORBIDDEN]


def _run_standalone(tmp_path: Path, script: Path, *args: str):
    """Copy `script` into a fresh folder and run it there by an interpreter that
    cannot import snncompile and its spec libraries (_isolated, checked first);
    returns the finished run (exit status 0) and the folder."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(script, work / script.name)
    env = _isolated(tmp_path)
    _assert_isolated(env, work)
    run = subprocess.run(
        [sys.executable, script.name, *args],
        check=False,
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return run, work


def test_standalone_script_trains_like_snncompile_train(tmp_path, variants):
    """A copy of the script, run where snncompile is not importable, writes the
    same metrics as `snncompile train` on the same spec, and its model.pt loads
    into build(spec)."""
    name = "synthetic_step"
    script = variants / f"{name}.py"
    run, work = _run_standalone(tmp_path, script, "--out", "out", "--epochs", "3")
    metrics = json.loads((work / "out" / "metrics.json").read_text())
    lines = [line for line in run.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3 and "test loss" in lines[1] and "test loss" not in lines[0]

    spec = _variant_spec(name)
    reference = loop.train(
        spec, out=tmp_path / "ref", progress=False, download=False, compile="none"
    )
    assert metrics["test_accuracy"] == reference["test_accuracy"]
    assert metrics["test_loss"] == reference["test_loss"]
    assert [h["train_loss"] for h in metrics["history"]] == [
        h["train_loss"] for h in reference["history"]
    ]
    assert [h["train_accuracy"] for h in metrics["history"]] == [
        h["train_accuracy"] for h in reference["history"]
    ]
    assert f"{metrics['test_accuracy']:.2%}" in lines[-1]

    net = snncompile.build(spec)
    net.load_state_dict(torch.load(work / "out" / "model.pt"))
    untrained = snncompile.build(spec, seed=spec.train.seed)
    module = _import(variants / f"{name}.py")
    test_x, test_y = module.load_split(False, None, torch.device("cpu"))
    _, trained_accuracy = module.evaluate(net, test_x, test_y, 0)
    _, untrained_accuracy = module.evaluate(untrained, test_x, test_y, 0)
    assert trained_accuracy > untrained_accuracy


def _data_root() -> Path:
    root = Path(os.environ.get("SNNCOMPILE_DATA") or REPO.parent / "shared" / "data")
    root = root.resolve()  # the script runs in another folder
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found in {root} (set SNNCOMPILE_DATA)")
    return root


def test_generated_mnist_script_runs_standalone(tmp_path):
    """generated/mnist_fc.py on a slice of MNIST, without snncompile, gives the
    test accuracy that `snncompile train` gives for the same slice."""
    root = _data_root()
    args = ["--data-root", str(root), "--limit-train", "256", "--limit-test", "200"]
    script = GENERATED / "mnist_fc.py"
    run, work = _run_standalone(
        tmp_path, script, *args, "--epochs", "1", "--out", "out"
    )
    assert "epoch 1/1: train loss" in run.stdout and "test loss" in run.stdout
    metrics = json.loads((work / "out" / "metrics.json").read_text())
    assert metrics["train_samples"] == 256 and metrics["test_samples"] == 200
    reference = loop.train(
        REPO / "specs" / "mnist_fc.yaml",
        data_root=root,
        out=tmp_path / "ref",
        limit_train=256,
        limit_test=200,
        progress=False,
        compile="none",
        download=False,
    )
    assert metrics["test_accuracy"] == reference["test_accuracy"]
    assert metrics["history"][0]["train_loss"] == reference["history"][0]["train_loss"]


# --------------------------------------------------------------------------- command
def test_check_passes_on_the_repository(capsys):
    assert cli(["codegen", "--check", *map(str, SPECS)]) == 0
    assert f"{len(SPECS)} scripts" in capsys.readouterr().out


def test_check_names_stale_and_missing_files(tmp_path, capsys):
    out = tmp_path / "gen"
    assert cli(["codegen", "-o", str(out), *map(str, SPECS)]) == 0
    assert (out / "__init__.py").is_file()
    for spec_path in SPECS:
        assert (out / _script(spec_path).name).read_bytes() == _script(
            spec_path
        ).read_bytes()
    capsys.readouterr()
    assert cli(["codegen", "-o", str(out), "--check", *map(str, SPECS)]) == 0
    stale, missing = out / _script(SPECS[0]).name, out / _script(SPECS[1]).name
    stale.write_text(stale.read_text() + "# edited\n")
    missing.unlink()
    capsys.readouterr()
    assert cli(["codegen", "-o", str(out), "--check", *map(str, SPECS)]) == 1
    err = capsys.readouterr().err
    assert f"{stale}: out of date" in err and f"{missing}: missing" in err
    others = [out / _script(p).name for p in SPECS[2:]]
    assert not any(str(p) in err for p in others)
    assert cli(["codegen", "-o", str(out), *map(str, SPECS)]) == 0
    written = capsys.readouterr().out
    assert f"{stale}: written" in written and f"{missing}: written" in written
    assert cli(["codegen", "-o", str(out), "--check", *map(str, SPECS)]) == 0


def test_command_reports_spec_errors_and_name_clashes(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("snncompile: 1\nname: bad\n")
    assert cli(["codegen", "-o", str(tmp_path), str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err
    twin = tmp_path / "twin.yaml"
    twin.write_text(SPECS[0].read_text())
    assert cli(["codegen", "-o", str(tmp_path), str(SPECS[0]), str(twin)]) == 2
    assert "both name the model" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.py"))


def test_refused_names_are_user_errors(tmp_path, capsys):
    spec = tmp_path / "reserved.yaml"
    spec.write_text(
        textwrap.dedent(
            """\
            snncompile: 1
            name: reserved
            input: {shape: [4]}
            steps: 2
            layers:
              - {type: linear, name: zero_grad, out_features: 3}
              - {type: leaky, beta: 0.5}
            train: {dataset: synthetic}
            """
        )
    )
    assert cli(["codegen", "-o", str(tmp_path), str(spec)]) == 2
    assert "zero_grad" in capsys.readouterr().err


@pytest.mark.compile
def test_standalone_script_compile_flag_trains_the_same(variants):
    """The script's --compile (every neuron loop through torch.compile) gives the
    same metrics as its eager run: on layers this small the compiled kernels do
    the same float operations, backward included."""
    module = _import(variants / "synthetic_step.py")
    _, eager = module.train(epochs=1)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    _, compiled = module.train(epochs=1, compile=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs
    assert compiled["history"] == [
        {**h, "seconds": c["seconds"]}
        for h, c in zip(eager["history"], compiled["history"])
    ]
    assert compiled["test_accuracy"] == eager["test_accuracy"]


def _fused_pairs(layers: str) -> list[str]:
    """The fused_leaky_linear lines of a small spec's fast layered forward (what
    lower/kernels.py puts on top of the built net)."""
    spec = snncompile.loads(
        "snncompile: 1\nname: fusion\ninput: {shape: [4, 6, 6], encoding: "
        "{type: direct}}\nsteps: 3\ndefaults: {beta: 0.9}\nlayers:\n"
        + layers
        + "decoding: {type: rate}\nloss: {type: ce_rate}\n"
        "train: {dataset: synthetic, batch_size: 4}\n"
    )
    graph = snncompile.analyze(spec)
    assert "fused_leaky_linear" not in render_model(graph)  # the plain model
    source = render_forward(graph, passes.plan(graph, fuse=True))
    return [
        line.strip() for line in source.splitlines() if "= fused_leaky_linear(" in line
    ]


def test_hidden_leaky_fuses_with_a_narrow_linear_layer_only():
    flat = "  - {type: flatten}\n  - {type: linear, name: fc, out_features: 16}\n"
    out = "  - {type: linear, name: out, out_features: 3}\n  - {type: leaky, name: last}\n"

    def hidden(width):
        return (
            "  - {type: leaky, name: lif}\n"
            f"  - {{type: linear, name: mid, out_features: {width}}}\n"
            "  - {type: leaky, name: lif2}\n"
        )

    fused_out = (
        "spk_lif2, h = fused_leaky_linear(self.lif2, self.out, h, spikes=all_spikes)"
    )
    assert _fused_pairs(flat + hidden(32) + out) == [
        "spk_lif, h = fused_leaky_linear(self.lif, self.mid, h, spikes=all_spikes)",
        fused_out,
    ]
    assert _fused_pairs(flat + hidden(33) + out) == [fused_out]  # too wide
    dropout = flat + "  - {type: leaky, name: lif}\n  - {type: dropout, p: 0.1}\n"
    assert _fused_pairs(dropout + out) == []  # not adjacent
    conv = "  - {type: conv2d, name: conv, out_channels: 2, kernel_size: 3}\n"
    maps = conv + "  - {type: leaky, name: maps}\n  - {type: flatten}\n" + out
    assert _fused_pairs(maps) == []  # feature maps: a flatten comes in between
    assert _fused_pairs(flat + out) == []  # the output layer keeps its membranes
