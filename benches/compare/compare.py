"""Runs our benchmark (`examples/compare.rs`) and PyTorch's (`torch_side.py`) back to back on the
same machine, one process per configuration and side, and writes the table to
docs/performance.md. Driven by `cargo xtask bench-compare`, which builds our side and the
virtual environment first.

    python compare.py --ours PATH/compare --diffusion PATH/diffusion --out docs/performance.md
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

CONFIGS = [
    # (name, our --model, UNet preset for the config, batch, repetitions)
    ("tiny-mnist", "tiny-mnist", "tiny_mnist", 32, 5),
    ("cifar10_iddpm", "cifar10_iddpm", "cifar10_iddpm", 8, 3),
    ("mlp", "mlp", None, 1024, 9),
]
HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd):
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt_t(r):
    if r is None:
        return "–"
    return f"{r['median']:.3g} s [{r['min']:.3g}, {r['max']:.3g}]"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ours", required=True)
    p.add_argument("--diffusion", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--only", default="")
    a = p.parse_args()
    rows = []
    for name, model, preset, batch, reps in CONFIGS:
        if a.only and name not in a.only.split(","):
            continue
        ours = run_json([a.ours, "--model", model, "--batch", str(batch), "--reps", str(reps)])
        cmd = [sys.executable, os.path.join(HERE, "torch_side.py"), "--model", model, "--batch", str(batch),
               "--reps", str(reps), "--threads", str(ours.get("threads", 2))]
        if preset:
            cfg = subprocess.run([a.diffusion, "model", "--preset", preset, "--format", "json"], check=True,
                                 capture_output=True, text=True).stdout
            f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
            f.write(cfg)
            f.close()
            cmd += ["--config", f.name]
        theirs = run_json(cmd)
        if ours["params"] != theirs["params"]:
            raise SystemExit(f"{name}: parameter counts differ: ours {ours['params']}, PyTorch {theirs['params']}")
        rows.append((name, batch, ours, theirs))
    lines = []
    lines.append("# Performance: diffusion-rs against PyTorch eager on the same CPU\n")
    lines.append(f"Measured {datetime.date.today()} on {cpu_name()} ({os.cpu_count()} logical CPUs), "
                 f"PyTorch {rows[0][3].get('torch', '?') if rows else '?'} "
                 f"({rows[0][3].get('threads', '?') if rows else '?'} threads) against our release build "
                 f"(burn `flex`, rayon), with\n")
    lines.append("```sh\ncargo xtask bench-compare\n```\n")
    lines.append("Each figure: median over the repetitions after one warm-up, [min, max]; ratio = PyTorch "
                 "time / our time (above 1: we are faster). *train*: forward, L_hybrid (L_simple for the "
                 "MLP), backward, AdamW. *forward*: the network alone, no autodiff. *ddim10*: DDIM, η = 0, "
                 "10 respaced steps from noise. Both sides build the same architecture (parameter counts "
                 "checked equal); each configuration runs in a fresh process per side.\n")
    lines.append("| config | batch | params | work | ours | PyTorch | ratio |")
    lines.append("|---|---|---|---|---|---|---|")
    for name, batch, ours, theirs in rows:
        for work in ("train", "forward", "ddim10"):
            o, t = ours.get(work), theirs.get(work)
            ratio = f"{t['median'] / o['median']:.2f}×" if o and t else "–"
            lines.append(f"| {name} | {batch} | {ours['params']:,} | {work} | {fmt_t(o)} | {fmt_t(t)} | {ratio} |")
    lines.append("")
    lines.append("Peak resident memory of each process (VmHWM / ru_maxrss); PyTorch's own import cost "
                 "(resident memory right after `import torch`) is shown separately and subtracted:\n")
    lines.append("| config | ours peak | PyTorch peak | PyTorch after import | PyTorch peak − import |")
    lines.append("|---|---|---|---|---|")
    for name, batch, ours, theirs in rows:
        lines.append(f"| {name} | {ours['peak_rss_mb']:.0f} MB | {theirs['peak_rss_mb']:.0f} MB | "
                     f"{theirs['import_rss_mb']:.0f} MB ({theirs['import_s']:.2f} s) | "
                     f"{theirs['peak_rss_mb'] - theirs['import_rss_mb']:.0f} MB |")
    lines.append("")
    body = "\n".join(lines) + "\n"
    marker = "<!-- profile -->"
    tail = ""
    if os.path.exists(a.out):
        old = open(a.out).read()
        if marker in old:
            tail = old[old.index(marker):]
    with open(a.out, "w") as f:
        f.write(body + ("\n" + tail if tail else ""))
    print(body)


if __name__ == "__main__":
    main()
