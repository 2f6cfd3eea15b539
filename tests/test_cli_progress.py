"""Long steps are never silent in a log: when stderr is not a terminal, a step that runs long enough prints a line
when it starts and one when it ends (on a terminal a spinner or rich's progress bars do it)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from vitprune.cli.common import Steps

ROOT = Path(__file__).resolve().parents[1]


def log_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=200), buf


def test_each_step_has_a_start_and_an_end_line_in_a_log():
    console, buf = log_console()
    steps = Steps(console, after=0)
    assert not steps.live  # a StringIO is no terminal
    steps.start("evaluating")
    steps.start("measuring")  # ends the step before it
    steps.end()
    steps.start("exporting")
    steps.close()  # stopped by an error: no end line, the error's own line follows
    lines = buf.getvalue().splitlines()
    assert lines[0] == "evaluating …" and lines[1].startswith("evaluating: done in ") and lines[1].endswith(" s")
    assert lines[2] == "measuring …" and lines[3].startswith("measuring: done in ")
    assert lines[4:] == ["exporting …"]


def test_a_quick_step_stays_quiet_and_a_long_one_announces_itself_late():
    """With ``after`` 0.2 s: a step that ends at once prints nothing (a quick error stays one line); one that runs
    longer gets its start line once the time is up, then its end line."""
    console, buf = log_console()
    steps = Steps(console, after=0.2)
    steps.start("quick")
    steps.end()
    assert buf.getvalue() == ""
    steps.start("slow")
    deadline = time.monotonic() + 30  # the timer thread prints the start line; a loaded machine may be late
    while "slow …" not in buf.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    steps.end()
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("slow …") and lines[1].startswith("slow: done in ") and len(lines) == 2


@pytest.mark.slow
def test_profile_with_its_output_piped_prints_start_and_end_lines(tmp_path):
    """`vitprune profile` as a CI log sees it: a real process whose stdout and stderr are pipes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "VITPRUNE_PROGRESS_AFTER": "0"}
    res = subprocess.run([sys.executable, "-m", "vitprune", "profile", "demo", "--no-weights", "--no-speed"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stderr.splitlines()
    assert lines[0] == "loading, counting …" and lines[1].startswith("loading, counting: done in "), res.stderr
    assert "GMACs (papers' GFLOPs)" in res.stdout
