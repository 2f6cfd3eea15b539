"""How fast the command line answers when it has nothing to compute: `--version`, `--help`, a command's `--help`,
`methods`, and usage errors (an unknown method name, an unknown flag).

Each invocation runs ``--rounds`` times as a fresh process (``python -m vitprune ...``, cwd: a temporary folder);
the table shows the median wall time and CPU time (user + system of the child: what the machine's load does not
inflate), and whether torch was imported (``-X importtime`` lists every module the process imported).

    python benchmarks/startup.py                 # 5 rounds
    python benchmarks/startup.py --rounds 3 --json startup.json

Not a test: times depend on the machine and its load. tests/test_cli_startup.py holds what makes it fast (no
torch, timm or method module imported by these invocations).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALLS = [
    ["--version"],
    ["--help"],
    ["compress", "--help"],
    ["methods"],
    ["methods", "evit"],
    ["profile", "demo", "--method", "evitt"],  # did you mean 'evit'? (exit 2)
    ["profile", "demo", "--no-such-flag"],  # exit 2
]


def run_once(args: list[str], cwd: str, env: dict[str, str], importtime: bool = False) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "vitprune", *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = {"exit": res.returncode, "wall_s": wall, "cpu_s": cpu}
    if importtime:
        modules = [line.split("|")[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")]
        out["modules"] = len(modules)
        out["torch"] = "torch" in modules
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    rows = []
    with tempfile.TemporaryDirectory() as cwd:
        for call in CALLS:
            probe = run_once(call, cwd, env, importtime=True)
            runs = [run_once(call, cwd, env) for _ in range(args.rounds)]
            rows.append({"command": "vitprune " + " ".join(call), "exit": probe["exit"],
                         "wall_s": statistics.median(r["wall_s"] for r in runs),
                         "cpu_s": statistics.median(r["cpu_s"] for r in runs),
                         "modules": probe["modules"], "torch_imported": probe["torch"]})
    width = max(len(r["command"]) for r in rows)
    print(f"{'command':<{width}}  exit  wall (s)  CPU (s)  modules  torch")
    for r in rows:
        print(f"{r['command']:<{width}}  {r['exit']:>4}  {r['wall_s']:>8.2f}  {r['cpu_s']:>7.2f}  {r['modules']:>7}  "
              f"{'yes' if r['torch_imported'] else 'no'}")
    print(f"median of {args.rounds} fresh processes each; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
