"""`snncompile validate` imports no torch (torch alone takes seconds to import):
checking a spec needs only spec/, ir/ and estimate.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from snncompile.ir.analyze import reserved_attributes
from snncompile.types.fields import MODULE_ATTRIBUTES

REPO = Path(__file__).parent.parent
SPECS = sorted(str(p) for p in (REPO / "specs").glob("*.yaml"))

VALIDATE = """\
import sys
from snncompile.cli import main

code = main(["validate", *sys.argv[1:]])
heavy = sorted(m for m in ("torch", "numpy", "torchvision") if m in sys.modules)
print("imported:", ",".join(heavy) or "-")
sys.exit(code)
"""


def run(code: str, *args: str, flags: tuple = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *flags, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )


def test_validate_imports_no_torch():
    done = run(VALIDATE, *SPECS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(": ok (") == len(SPECS)
    assert done.stdout.splitlines()[-1] == "imported: -"


def test_validate_with_errors_and_overrides_imports_no_torch(tmp_path):
    octal = tmp_path / "octal.yaml"
    octal.write_text("snncompile: 1\nname: x\nsteps: 025\n")
    shadows = tmp_path / "shadows.yaml"
    mnist_fc = (REPO / "specs" / "mnist_fc.yaml").read_text()
    shadows.write_text(mnist_fc.replace("name: mnist_fc", "name: json"))
    done = run(VALIDATE, SPECS[0], str(octal), str(shadows), "--set", "train.seed=1")
    assert done.returncode == 2
    assert "octal" in done.stderr and "would shadow" in done.stderr
    assert done.stdout.splitlines()[-1] == "imported: -"


def test_importtime_of_validate_lists_no_torch():
    done = run(VALIDATE, SPECS[0], flags=("-X", "importtime"))
    assert done.returncode == 0, done.stderr
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "snncompile.spec.load" in modules
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}


def test_module_attributes_match_the_installed_torch():
    """The names a layer may not take, listed without importing torch, are
    torch.nn.Module's attributes (the dunders are refused as names anyway)."""
    from torch import nn

    actual = {n for n in dir(nn.Module()) if not n.startswith("__")}
    assert actual <= MODULE_ATTRIBUTES, sorted(actual - MODULE_ATTRIBUTES)
    assert actual <= reserved_attributes()


def test_libyaml_and_pure_python_read_the_same(tmp_path):
    """load.py composes with libyaml's parser where PyYAML has it (12 times
    faster), under the same Python composer: the same data and positions."""
    import yaml

    from snncompile.spec import load as loader

    if loader._FastLoader is None:
        return
    for path in SPECS:
        text = Path(path).read_text(encoding="utf-8")
        fast = loader._Builder(loader.SourceMap(path))
        slow = loader._Builder(loader.SourceMap(path))
        fast_data = fast.build(yaml.compose(text, Loader=loader._FastLoader), ())
        slow_data = slow.build(yaml.compose(text, Loader=loader._Loader), ())
        assert fast_data == slow_data and fast.problems == slow.problems == []
        assert fast.source.keys == slow.source.keys
        assert fast.source.values == slow.source.values
