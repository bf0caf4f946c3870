"""One full training epoch, end to end: snnTorch Tutorial 5's loop against
`snncompile train specs/mnist_fc.yaml`, each in a fresh process, on real MNIST.

    python benchmarks/epoch.py --data-root ../shared/data [--cold] [--no-monitor]
                               [--repeats 3] [--tutorial-repeats 1] [--json FILE]

Rows (wall seconds; "epoch" = the training loop plus the test-set evaluation,
"process" = the whole command, interpreter start and data loading included):

- tutorial: benchmarks/tutorial5.py, the tutorial's loop as written (DataLoader
  with per-sample transforms, snntorch.Leaky, one test batch's loss after every
  step, then the test-set accuracy);
- tutorial, no monitoring (--no-monitor): the same without the per-step test
  batch, the fairest reading of "the tutorial's training";
- snncompile train: the default command (Leaky layers on snncompile's C
  kernels, `--compile native`), its epoch = training seconds (compilation
  included) + evaluation seconds from metrics.json; with --cold the first run
  gets empty caches (SNNCOMPILE_CACHE for the C kernels and the decoded dataset,
  TORCHINDUCTOR_CACHE_DIR for inductor), i.e. a newcomer's first run, and later
  runs reuse what it built.

Ratios are tutorial epoch / snncompile epoch (and the same for process time),
from medians. The tutorial takes a minute and a half per run, snncompile seconds:
`--tutorial-repeats` (1) and `--repeats` (3) count them apart; the runs take
turns (tutorial, then snncompile runs, ...) so machine load hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], env: dict | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=env, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def tutorial(data_root: str, monitor: bool) -> dict:
    command = [sys.executable, "benchmarks/tutorial5.py", "--data-root", data_root]
    seconds, out = run(command + ([] if monitor else ["--no-monitor"]))
    result = json.loads(out.strip().splitlines()[-1])
    return {
        "epoch_s": result["epoch_seconds"],
        "process_s": seconds,
        "test_accuracy": result["test_accuracy"],
    }


def snncompile_train(data_root: str, work: Path, env: dict) -> dict:
    out = Path(tempfile.mkdtemp(dir=work))
    command = [sys.executable, "-m", "snncompile", "train", "specs/mnist_fc.yaml"]
    command += ["--data-root", data_root, "--out", str(out), "--quiet"]
    seconds, _ = run(command, env)
    metrics = json.loads((out / "metrics.json").read_text())
    (entry,) = metrics["history"]
    return {
        "epoch_s": entry["seconds"] + entry["eval_seconds"],
        "process_s": seconds,
        "compile_s": metrics["compile_seconds"],
        "cache_hits": metrics["compile_cache"]["cache_hits"],
        "cache_misses": metrics["compile_cache"]["cache_misses"],
        "test_accuracy": metrics["test_accuracy"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("SNNCOMPILE_DATA"))
    parser.add_argument("--repeats", type=int, default=3, help="snncompile runs (3)")
    parser.add_argument(
        "--tutorial-repeats", type=int, default=1, help="tutorial runs (1)"
    )
    parser.add_argument("--cold", action="store_true", help="start from no cache")
    parser.add_argument("--no-monitor", action="store_true", help="add that row")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if not args.data_root:
        parser.error("pass --data-root DIR (the folder holding MNIST/raw)")
    if args.repeats < 1 or args.tutorial_repeats < 1:
        parser.error("--repeats and --tutorial-repeats must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="snncompile-epoch-"))
    env = dict(os.environ)
    if args.cold:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")
        env["SNNCOMPILE_CACHE"] = str(work / "snncompile-cache")
    rows: dict[str, list[dict]] = {"tutorial": [], "snncompile": []}
    if args.no_monitor:
        rows["tutorial, no monitoring"] = []
    turns = max(args.repeats, args.tutorial_repeats)
    done = 0
    for turn in range(turns):
        if turn < args.tutorial_repeats:
            rows["tutorial"].append(tutorial(args.data_root, monitor=True))
            if args.no_monitor:
                rows["tutorial, no monitoring"].append(tutorial(args.data_root, False))
        share = args.repeats // turns + (turn < args.repeats % turns)
        for _ in range(share):
            result = snncompile_train(args.data_root, work, env)
            key = "snncompile, cold cache" if args.cold and done == 0 else "snncompile"
            rows.setdefault(key, []).append(result)
            done += 1
    rows = {k: v for k, v in rows.items() if v}
    base = statistics.median(r["epoch_s"] for r in rows["tutorial"])
    base_process = statistics.median(r["process_s"] for r in rows["tutorial"])
    print("| run | epoch s | process s | epoch x | process x | compile s | test acc |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for name, results in rows.items():
        epoch = statistics.median(r["epoch_s"] for r in results)
        process = statistics.median(r["process_s"] for r in results)
        compile_s = [r["compile_s"] for r in results if r.get("compile_s") is not None]
        accuracy = statistics.median(r["test_accuracy"] for r in results)
        summary[name] = {
            "runs": results,
            "epoch_s": epoch,
            "process_s": process,
            "epoch_speedup": base / epoch,
            "process_speedup": base_process / process,
        }
        compile_text = f"{statistics.median(compile_s):.1f}" if compile_s else "-"
        print(
            f"| {name} ({len(results)}) | {epoch:.1f} | {process:.1f} | "
            f"{base / epoch:.1f} | {base_process / process:.1f} | {compile_text} | "
            f"{accuracy:.2%} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
