"""The output-folder lock: a second process is refused in one line naming the owner, the lock is re-entrant in
one process, a forked child does not inherit it, and the lock of a killed process is taken over. Real processes
and real signals throughout."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.side_by_side import selected
from vitprune.errors import FolderInUseError, OutputFolderError, VitpruneError
from vitprune.hub.lock import host_name, output_lock, read_owner

ROOT = Path(__file__).resolve().parents[1]

# a real process that takes the lock of the folder named on its first line of stdin (tab, the purpose) and holds it
# until the next line arrives
HOLDER = """
import sys
from vitprune.hub.lock import output_lock
folder, purpose = sys.stdin.readline().rstrip("\\n").split("\\t")
with output_lock(folder, purpose):
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""
USE_A_HOLDER = ("test_second_process_is_refused_naming_the_owner_then_gets_it_after_release",
                "test_lock_of_a_killed_process_is_taken_over",
                "test_reentrant_in_one_process_and_not_inherited_by_a_fork",
                "test_compress_into_a_folder_another_process_holds_is_refused_before_training")


@pytest.fixture(scope="module")
def holders(request):
    """One HOLDER process for each selected test that uses one, started side by side (each spends seconds on its
    imports) and waiting for its folder; a test takes its own with ``holders.pop()``."""
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for test in USE_A_HOLDER for _ in selected(request, test)]
    yield list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def hold(holders: list, folder: Path, purpose: str = "compress") -> subprocess.Popen:
    """A real process (one of ``holders``) that holds ``folder``'s lock until a line arrives on its stdin."""
    proc = holders.pop()
    proc.stdin.write(f"{folder}\t{purpose}\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert line.strip() == "held", line + proc.stderr.read()
    return proc


@pytest.mark.slow
def test_second_process_is_refused_naming_the_owner_then_gets_it_after_release(holders, tmp_path):
    folder = tmp_path / "out"
    proc = hold(holders, folder, "compress")
    try:
        with pytest.raises(FolderInUseError) as e:
            with output_lock(folder, "save"):
                pass
        msg = str(e.value)
        assert f"is in use by pid {proc.pid} on {host_name()} since " in msg and "(compress)" in msg
        assert "\n" not in msg and isinstance(e.value, VitpruneError)
        assert read_owner(folder)["pid"] == proc.pid
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
        proc.wait(timeout=30)
    assert read_owner(folder) is None  # the owner record goes with the lock
    with output_lock(folder, "save"):
        assert read_owner(folder)["pid"] == os.getpid() and read_owner(folder)["purpose"] == "save"


@pytest.mark.slow
def test_lock_of_a_killed_process_is_taken_over(holders, tmp_path):
    folder = tmp_path / "out"
    proc = hold(holders, folder)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert read_owner(folder)["pid"] == proc.pid  # the dead owner's record is still there
    with output_lock(folder, "save"):
        assert read_owner(folder)["pid"] == os.getpid()


@pytest.mark.slow
def test_reentrant_in_one_process_and_not_inherited_by_a_fork(holders, tmp_path):
    folder = tmp_path / "out"
    with output_lock(folder, "compress"):
        with output_lock(folder, "save"):  # compress -> save: no deadlock
            assert read_owner(folder)["purpose"] == "compress"
        assert read_owner(folder)["pid"] == os.getpid()  # the inner exit did not let go
        pid = os.fork()
        if pid == 0:  # a forked child (a DataLoader worker, say) is another process: refused
            try:
                with output_lock(folder, "save"):
                    os._exit(0)
            except FolderInUseError:
                os._exit(3)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3
    # let go: another process takes it
    proc = holders.pop()
    stdout, stderr = proc.communicate(f"{folder}\tsave\n\n", timeout=120)
    assert stdout.split() == ["held", "released"], stderr


def test_a_file_in_place_of_the_folder_is_one_line(tmp_path):
    plain = tmp_path / "plainfile.txt"
    plain.write_text("not a folder")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        with output_lock(plain, "compress"):
            pass
    with pytest.raises(OutputFolderError, match="a file is in the way"):
        with output_lock(plain / "out", "compress"):
            pass
    assert plain.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_parent_is_one_line(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(OutputFolderError, match="permission denied"):
            with output_lock(parent / "out", "compress"):
                pass
    finally:
        parent.chmod(0o700)


def test_owner_record_is_json_with_pid_host_purpose_since(tmp_path):
    with output_lock(tmp_path / "o", "import-checkpoint"):
        data = json.loads((tmp_path / "o" / ".vitprune" / "owner.json").read_text())
    assert set(data) == {"pid", "host", "purpose", "since"} and data["purpose"] == "import-checkpoint"


@pytest.mark.slow
def test_compress_holds_the_lock_from_before_training_until_its_save_is_done(tmp_path):
    import vitprune

    out = tmp_path / "run"
    seen: dict = {}

    def progress(e):  # who holds the folder at the first training step and while saving
        key = e["event"] if e["event"] == "step" else e.get("name")
        if key in ("step", "saving"):
            seen.setdefault(key, read_owner(out))

    res = vitprune.compress("demo", "evit", data="demo", output=str(out), epochs=0.05, speed=False,
                            progress=progress, keep_rate=0.7)
    assert res.finished
    for key in ("step", "saving"):
        assert seen[key]["pid"] == os.getpid() and seen[key]["purpose"] == "compress", key
    assert read_owner(out) is None  # let go at the end
    assert vitprune.load(out).vitprune_method.name == "evit"  # its own save did not wait on its lock


@pytest.mark.slow
def test_compress_into_a_folder_another_process_holds_is_refused_before_training(holders, tmp_path):
    from typer.testing import CliRunner

    from vitprune.cli.main import app

    out = tmp_path / "run"
    proc = hold(holders, out, "compress")
    try:
        res = CliRunner().invoke(app, ["compress", "demo", "-m", "evit", "--epochs", "1", "--no-speed", "-o",
                                       str(out)], env={"COLUMNS": "300"})
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=30)
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {out} is in use by pid {proc.pid} on "), res.output
    assert sorted(p.name for p in out.iterdir()) == [".vitprune"]  # no checkpoint, no log: nothing ran
