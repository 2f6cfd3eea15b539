"""The scripts in benchmarks/ as module objects for the tests, without leaving them importable.

A script is loaded from its file under the name ``vitprune_bench_<name>`` (no installed package uses that prefix),
and ``sys.modules`` holds it only while the file runs (dataclasses look their module up there): a plain
``import kernels`` with benchmarks/ on ``sys.path`` would leave ``sys.modules['kernels']`` pointing at
benchmarks/kernels.py, where transformers later looks for Hugging Face's own ``kernels`` package. ``sys.path`` is
never touched.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
#: prefixes of the module names benchmark code registers while it runs (its scripts; speed.py's --baseline tree)
PREFIXES = ("vitprune_bench_", "vitprune_baseline")


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py, run once, as a module named ``vitprune_bench_NAME`` that ``sys.modules`` does not keep."""
    spec = importlib.util.spec_from_file_location(f"vitprune_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None, f"no benchmarks/{name}.py"
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        forget(before)
    return module


def forget(before: set[str]) -> None:
    """Drop the benchmark modules registered since ``before`` (a snapshot of ``sys.modules``' names)."""
    for key in set(sys.modules) - before:
        if key.startswith(PREFIXES):
            del sys.modules[key]


def leaked_benchmark_modules() -> list[str]:
    """Names in ``sys.modules`` whose module is a file in benchmarks/ (each one shadows whatever else has its name)."""
    folder = str(BENCH)
    return sorted(key for key, module in list(sys.modules.items())
                  if os.path.dirname(getattr(module, "__file__", None) or "") == folder)
