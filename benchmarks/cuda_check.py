"""Check snncompile's CUDA path on a machine with a GPU, in one run.

    python benchmarks/cuda_check.py --data-root DIR [--out DIR] [--budget SECONDS]

Stages, most important first; a stage is skipped once `--budget` seconds have
passed, and one that fails does not stop the others:

1. exactness on CUDA, for every spec in specs/ (batch 128, same weights, same
   batch): every trainable variant of `snncompile bench` (snncompile's per-step
   schedule, the plain model's Leaky step loops, torch.compile'd neurons,
   whole-model torch.compile, and the snnTorch tutorial loop on the GPU where it
   can express the spec) against its eager row (`build()` on the fused kernels,
   harness benchmarks/bench.py): identical spikes of every spiking layer,
   loss and every gradient allclose (not the snnTorch loop's gradients: its
   weights have other names);
2. `snncompile train` of mnist_fc for one epoch on the GPU, compiled (the
   default; Leaky layers fall back from the C kernels to torch.compile there)
   and eager (`--compile none`): accuracy and seconds;
3. `snncompile bench specs/mnist_fc.yaml --device cuda`;
4. the generated standalone script on the GPU, run from another folder without
   snncompile on the path;
5. the same train and bench for mnist_csnn.

Everything it prints goes to OUT/cuda_check.log as well, and a summary to
OUT/cuda_check.json. Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Log:
    def __init__(self, path: Path):
        self.file = path.open("w", encoding="utf-8")

    def __call__(self, *parts) -> None:
        text = " ".join(str(p) for p in parts)
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()


# --------------------------------------------------------------------------- exactness
def exactness(spec_path: Path, log, device: str, batch: int = 128) -> dict:
    """Every trainable variant of `snncompile bench` on `device` against its
    eager row (build() on the fused kernels), one forward and backward from the
    same weights on the same batch."""
    import argparse

    import torch

    import snncompile

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness
    from bench import Bench, compare_outputs

    options = argparse.Namespace(
        batch=batch,
        seed=0,
        reference="auto",
        no_compile=False,
        threads=None,
        plain_optimizer=False,
        clock="wall",
        device=device,
    )
    bench = Bench(snncompile.load(spec_path), options)
    graph = bench.graph
    sync = torch.cuda.synchronize if bench.device.type == "cuda" else lambda: None
    random = graph.encoding["type"] in ("rate",) or any(
        n.type == "dropout" for n in graph.nodes
    )
    results = {}
    for variant in bench.variants:
        if not variant.trainable:
            continue
        torch.manual_seed(0)
        start = time.perf_counter()
        if variant.records:
            spk, mem, records = variant.model(bench.x, all_spikes=True)
        else:
            (spk, mem), records = variant.model(bench.x), None
        loss = (variant.loss or bench.loss)(spk, mem, bench.y, records)
        loss.backward()
        sync()
        results[variant.key] = {
            "outputs": (
                spk.detach(),
                mem.detach(),
                records and {k: v.detach() for k, v in records.items()},
            ),
            "loss": loss.detach(),
            # a whole-model torch.compile'd net prefixes the names of its weights
            "grads": {
                n.removeprefix("_orig_mod."): p.grad.detach().clone()
                for n, p in variant.model.named_parameters()
            },
            "first_s": time.perf_counter() - start,
        }
    ref = results["eager"]
    report, ok = {}, True
    for key, got in results.items():
        if key == "eager":
            continue
        entry = compare_outputs(got["outputs"], ref["outputs"])
        entry["loss"] = [float(got["loss"]), float(ref["loss"])]
        entry["first_call_s"] = round(got["first_s"], 2)
        if got["grads"].keys() == ref["grads"].keys():  # not snnTorch's own names
            worst = 0.0
            for name, grad in got["grads"].items():
                other = ref["grads"][name]
                scale = float(other.abs().max()) or 1.0
                worst = max(worst, float((grad - other).abs().max()) / scale)
            entry["max_grad_diff_rel"] = worst
        loss_ok = torch.allclose(got["loss"], ref["loss"], rtol=1e-4, atol=1e-6)
        grads_ok = entry.get("max_grad_diff_rel", 0.0) < 1e-3
        entry["passed"] = bool(entry["spikes_match"] and loss_ok and grads_ok)
        if random:
            entry["informative"] = "random encoding or dropout: draws differ"
        elif not entry["passed"]:
            ok = False
        report[key] = entry
        log(f"  {graph.name} {key:9s} vs eager: {json.dumps(entry)}")
    return {"passed": ok, "variants": report}


# --------------------------------------------------------------------------- commands
def command(args, log, timeout, cwd=None, env=None) -> dict:
    log("$ " + " ".join(str(a) for a in args))
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=env,
            check=False,
        )
        code, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        code = "timeout"
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else ""
    seconds = time.perf_counter() - start
    for line in out.strip().splitlines()[-40:]:
        log("  " + line)
    log(f"  -> exit {code} in {seconds:.1f} s")
    return {"exit": code, "seconds": round(seconds, 1), "tail": out[-3000:]}


def train(spec, mode, args, log) -> dict:
    """`snncompile train SPEC` for one epoch, its run directory in a temporary one."""
    run = Path(tempfile.mkdtemp(prefix="snncompile-run-")) / f"{Path(spec).stem}-{mode}"
    result = command(
        [
            sys.executable,
            "-m",
            "snncompile",
            "train",
            spec,
            "--data-root",
            args.data_root,
            "--out",
            run,
            "--quiet",
            "--no-download",
            "--compile",
            mode,
        ],
        log,
        timeout=300,
        cwd=ROOT,
    )
    metrics = run / "metrics.json"
    if metrics.exists():
        data = json.loads(metrics.read_text())
        result["test_accuracy"] = data["test_accuracy"]
        result["train_seconds"] = sum(h["seconds"] for h in data["history"])
        result["compile_seconds"] = data.get("compile_seconds")
        result["device"] = data.get("device")
    return result


def bench(spec, repeats, args, log, out: Path) -> dict:
    path = out / f"bench-{Path(spec).stem}.json"
    result = command(
        [
            sys.executable,
            "-m",
            "snncompile",
            "bench",
            spec,
            "--device",
            args.device,
            "--repeats",
            repeats,
            "--json",
            path,
        ],
        log,
        timeout=300,
        cwd=ROOT,
    )
    if path.exists():
        result["report"] = json.loads(path.read_text())
        result.pop("tail")
    return result


def standalone(args, log) -> dict:
    """The generated script, copied alone to a temporary folder and run there."""
    folder = Path(tempfile.mkdtemp(prefix="snncompile-standalone-"))
    shutil.copy(ROOT / "generated" / "mnist_fc.py", folder)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = ""  # no snncompile
    result = {}
    for flag in ([], ["--compile"]):
        name = "compiled" if flag else "eager"
        result[name] = command(
            [
                sys.executable,
                "mnist_fc.py",
                "--device",
                args.device,
                "--data-root",
                Path(args.data_root).resolve(),
                "--epochs",
                "1",
                *flag,
            ],
            log,
            timeout=300,
            cwd=folder,
            env=env,
        )
        metrics = folder / "runs" / "mnist_fc" / "metrics.json"
        if metrics.exists():
            result[name]["test_accuracy"] = json.loads(metrics.read_text())[
                "test_accuracy"
            ]
            metrics.unlink()
    return result


# --------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="holds MNIST/raw")
    parser.add_argument("--out", default="cuda-check", help="where results go")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds")
    parser.add_argument(
        "--device", default="cuda", help="cuda (default); cpu tries the script out"
    )
    parser.add_argument(
        "--stages", help="comma-separated name prefixes of the stages to run"
    )
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "cuda_check.log")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        log("no CUDA device: nothing to check")
        return 2
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "-"
    log(f"torch {torch.__version__}, {gpu}, python {sys.version.split()[0]}")
    begin = time.perf_counter()
    summary: dict = {"torch": torch.__version__, "gpu": gpu, "device": args.device}
    fc, csnn = "specs/mnist_fc.yaml", "specs/mnist_csnn.yaml"
    others = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "specs").glob("*.yaml")
        if p.name not in ("mnist_fc.yaml", "mnist_csnn.yaml")
    )
    pytest = [sys.executable, "-m", "pytest", "-q", "-k", "cuda", "tests"]
    stages = [("pytest -k cuda", lambda: command(pytest, log, 300, cwd=ROOT))]
    stages += [
        ("exactness " + s, lambda s=s: exactness(ROOT / s, log, args.device))
        for s in (fc, csnn)
    ]
    stages += [
        ("train mnist_fc native", lambda: train(fc, "native", args, log)),
        ("train mnist_fc none", lambda: train(fc, "none", args, log)),
        ("bench mnist_fc", lambda: bench(fc, 10, args, log, out)),
        ("standalone mnist_fc", lambda: standalone(args, log)),
        ("train mnist_csnn native", lambda: train(csnn, "native", args, log)),
        ("train mnist_csnn none", lambda: train(csnn, "none", args, log)),
        ("bench mnist_csnn", lambda: bench(csnn, 3, args, log, out)),
    ]
    stages += [
        ("exactness " + s, lambda s=s: exactness(ROOT / s, log, args.device))
        for s in others
    ]
    if args.stages:
        wanted = args.stages.split(",")
        stages = [(n, f) for n, f in stages if any(n.startswith(w) for w in wanted)]
    failed = []
    for name, stage in stages:
        elapsed = time.perf_counter() - begin
        if elapsed > args.budget:
            log(f"== {name}: skipped ({elapsed:.0f} s past the budget)")
            summary[name] = "skipped"
            continue
        log(f"== {name} (at {elapsed:.0f} s)")
        try:
            summary[name] = result = stage()
        except Exception:  # noqa: BLE001 - report and go on with the next stage
            log(traceback.format_exc())
            summary[name] = {"error": traceback.format_exc()[-2000:]}
            failed.append(name)
            continue
        bad = result.get("passed") is False or result.get("exit") not in (None, 0)
        bad = bad or any(
            isinstance(v, dict) and v.get("exit") not in (None, 0)
            for v in result.values()
        )
        if bad:
            failed.append(name)
        (out / "cuda_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["failed"] = failed
    (out / "cuda_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    log("FAILED: " + ", ".join(failed) if failed else "all stages passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
