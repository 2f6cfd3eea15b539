"""Re-saving never loses or mixes a model: real save processes are killed with SIGKILL at every step of the
commit and at random instants, and each time the folder loads as exactly the old model or exactly the new one
(weights, method options, report.json and card together; for dense models plain timm's `local-dir:` too). Two
real processes saving into one folder: the second is refused in one line and the folder ends whole."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

import vitprune
from vitprune.errors import OutputFolderError
from vitprune.hub.lock import STORE

from .side_by_side import selected
from .test_train_utils import same_weights

ROOT = Path(__file__).resolve().parents[1]

# A zygote: imports torch and vitprune once, builds models A and B, then for each line "WHICH STOP FOLDER" (tab-separated) on
# stdin forks a child that saves WHICH into FOLDER and SIGKILLs itself when the save reaches step STOP ("-": never; "?":
# print every step). The zygote prints "pid N", the child "step NAME" lines; after the next (empty) line on stdin the
# zygote reaps the child and prints "exit CODE".
ZYGOTE = r"""
import importlib, json, os, signal, sys
import torch
torch.set_num_threads(1)
import timm, vitprune

save_mod = importlib.import_module("vitprune.hub.save")

def vit(seed):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=4,
                             embed_dim=48, num_heads=3, num_classes=10).eval()

# same shapes, other options and weights: a mix would load without an error
models = {"A": vitprune.apply_method(vit(1), "evit", keep_rate=0.7),
          "B": vitprune.apply_method(vit(2), "evit", keep_rate=0.5)}
for line in sys.stdin:
    which, stop, folder = line.rstrip("\n").split("\t")
    pid = os.fork()
    if pid == 0:
        def hook(step):
            if stop == "?":
                print("step", step, flush=True)
            elif step == stop:
                os.kill(os.getpid(), signal.SIGKILL)
        save_mod._on_step = hook
        vitprune.save(models[which], folder, extra_files={"report.json": json.dumps({"model": which})},
                      card=f"---\ntags:\n- vitprune\n---\ncard of {which}\n")
        os._exit(0)
    print("pid", pid, flush=True)
    sys.stdin.readline()  # reaped only when told: until then the pid cannot go to another process
    _, status = os.waitpid(pid, 0)
    print("exit", os.waitstatus_to_exitcode(status), flush=True)
"""


def vit(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # the zygote's models, made the same way (same seed, same shapes)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=4,
                             embed_dim=48, num_heads=3, num_classes=10).eval()


class Zygote:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def start(self, folder: Path, which: str, stop: str = "-") -> int:
        self.proc.stdin.write(f"{which}\t{stop}\t{folder}\n")
        self.proc.stdin.flush()
        kind, pid = self.proc.stdout.readline().split()
        assert kind == "pid"
        return int(pid)

    def finish(self) -> tuple[int, list[str]]:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        steps = []
        while True:
            kind, value = self.proc.stdout.readline().split(maxsplit=1)
            if kind == "exit":
                return int(value), steps
            steps.append(value.strip())

    def save(self, folder: Path, which: str, stop: str = "-") -> tuple[int, list[str]]:
        self.start(folder, which, stop)
        return self.finish()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


KILL_TESTS = ("test_kill_at_every_step_of_the_commit_leaves_old_or_new",
              "test_kill_at_random_instants_leaves_old_or_new")
TWO = "test_two_processes_one_folder_second_refused_in_one_line"


@pytest.fixture(scope="module")
def started(tmp_path_factory, request):
    """The long-lived processes of this module's tests, started side by side up front (each spends seconds on its
    imports) for the tests this run selected: a zygote for each kill test (by the test's name), and for the
    two-process test the first process, ``(folder, process)``, which saves into a folder of its own and stops
    (prints "paused") at its "staged" step."""
    procs = {name: Zygote() for name in KILL_TESTS if selected(request, name)}
    if selected(request, TWO):
        folder = tmp_path_factory.mktemp("two") / "out"
        procs[TWO] = (folder, subprocess.Popen([sys.executable, "-c", PAUSED_SAVE, str(folder), "1"], cwd=ROOT,
                                               text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE))
    yield procs
    for proc in [p.proc if isinstance(p, Zygote) else p[1] for p in procs.values()]:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


REFS = {}


def refs() -> dict[str, torch.nn.Module]:
    if not REFS:  # the zygote's two models, made the same way
        REFS.update(A=vitprune.apply_method(vit(1), "evit", keep_rate=0.7),
                    B=vitprune.apply_method(vit(2), "evit", keep_rate=0.5))
    return REFS


def which_model(folder: Path) -> str:
    """'A' or 'B' when the folder is exactly that model (weights, options, report, card, and the weights plain
    timm reads through `local-dir:`); fails on anything else."""
    loaded = vitprune.load(folder)
    sd = loaded.state_dict()
    for name, ref in refs().items():
        rsd = ref.state_dict()
        if sd.keys() == rsd.keys() and all(torch.equal(sd[k], rsd[k]) for k in sd):
            assert loaded.vitprune_method.options_dict() == ref.vitprune_method.options_dict()
            plain = timm.create_model(f"local-dir:{folder}", pretrained=True).state_dict()  # EViT adds no tensors
            assert all(torch.equal(plain[k], rsd[k]) for k in rsd)
            assert json.loads((folder / "report.json").read_text()) == {"model": name}
            assert (folder / "README.md").read_text().endswith(f"card of {name}\n")
            return name
    raise AssertionError(f"{folder} holds neither model A nor model B")


def make_legacy(src: Path, dst: Path) -> None:
    """A folder as saves before the versioned layout wrote it: plain files at the top level."""
    dst.mkdir()
    for name in ("config.json", "model.safetensors", "README.md", "report.json"):
        shutil.copyfile(src / name, dst / name)


def leftovers(folder: Path) -> list[str]:
    """Tagged names (owner~host~pid) anywhere in the folder other than the version in use."""
    current = os.readlink(folder / STORE / "current").split("/")[-1]
    return sorted(p.name for p in folder.rglob("*") if "~" in p.name and p.name != current)


@pytest.mark.slow
def test_kill_at_every_step_of_the_commit_leaves_old_or_new(started, tmp_path):
    """B is saved over A, in the versioned layout and over plain files (a folder saved before it); a fresh copy
    of the folder per step, the saving process killed at that step: before the switch A, from it on B."""
    z = started["test_kill_at_every_step_of_the_commit_leaves_old_or_new"]
    try:
        seed = tmp_path / "seed"
        assert z.save(seed, "A") == (0, [])
        for layout in ("versioned", "plain files"):
            start = tmp_path / layout
            if layout == "plain files":
                make_legacy(seed, start)
            else:
                shutil.copytree(seed, start, symlinks=True)
            probe = tmp_path / f"{layout} probe"
            shutil.copytree(start, probe, symlinks=True)
            code, steps = z.save(probe, "B", "?")
            assert code == 0 and steps[-1] == "done" and which_model(probe) == "B"
            assert ("adopted" in steps) == (layout == "plain files"), steps
            for i, stop in enumerate(steps):
                folder = tmp_path / f"{layout} {i}"
                shutil.copytree(start, folder, symlinks=True)
                code, _ = z.save(folder, "B", stop)
                assert code == -signal.SIGKILL, stop
                expected = "B" if i >= steps.index("switched") else "A"
                assert which_model(folder) == expected, stop
                assert z.save(folder, "A") == (0, [])  # the next save cleans up after the killed one
                assert which_model(folder) == "A" and leftovers(folder) == [], stop
        z.close()
    finally:
        if z.proc.poll() is None:
            z.proc.kill()


@pytest.mark.slow
def test_kill_at_random_instants_leaves_old_or_new(started, tmp_path):
    """SIGKILL from outside at random times over the whole save, 40 times; every time the folder is A or B."""
    folder = tmp_path / "out"
    z = started["test_kill_at_random_instants_leaves_old_or_new"]
    rng = random.Random(0)
    try:
        assert z.save(folder, "A") == (0, [])
        durations = []
        for which in ("B", "A", "B", "A"):  # how long a re-save takes here
            z.start(folder, which)
            t0 = time.perf_counter()
            assert z.finish() == (0, [])
            durations.append(time.perf_counter() - t0)
        span = max(durations)
        state, killed = "A", 0
        outcomes = {"old": 0, "new": 0}
        for _ in range(40):
            new = "B" if state == "A" else "A"
            pid = z.start(folder, new)
            time.sleep(rng.uniform(0, span))
            os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid is still the child's, finished or not
            code, _ = z.finish()
            killed += code == -signal.SIGKILL
            got = which_model(folder)
            assert got in (state, new)
            outcomes["new" if got == new else "old"] += 1
            state = got
        assert z.save(folder, "B" if state == "A" else "A") == (0, [])
        z.close()
        assert leftovers(folder) == []
        assert killed > 0, outcomes  # kills landed inside saves, not only after them
        print(f"random kills: {killed} of 40 inside a save; outcomes {outcomes}; save takes {span * 1000:.0f} ms")
    finally:
        if z.proc.poll() is None:
            z.proc.kill()


# ------------------------------------------------------------------------------------------ two processes

PAUSED_SAVE = r"""
import importlib, sys, torch, timm, vitprune
save_mod = importlib.import_module("vitprune.hub.save")
torch.manual_seed(int(sys.argv[2]))
model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=4,
                          embed_dim=48, num_heads=3, num_classes=10).eval()
def hook(step):
    if step == "staged":
        print("paused", flush=True)
        sys.stdin.readline()
save_mod._on_step = hook
vitprune.save(model, sys.argv[1])
print("saved", flush=True)
"""


@pytest.mark.slow
def test_two_processes_one_folder_second_refused_in_one_line(started, tmp_path):
    folder, first = started[TWO]  # PAUSED_SAVE of model seed 1 into folder, started by the fixture
    try:
        assert first.stdout.readline().strip() == "paused", first.stderr.read()
        # the second: the CLI, importing a valid official-style checkpoint (EViT's are plain timm weights) into the
        # same folder: converted and checked first, then refused at the folder
        ckpt = tmp_path / "evit.safetensors"
        import timm
        from safetensors.torch import save_file

        save_file(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), str(ckpt))
        second = subprocess.run(
            [sys.executable, "-m", "vitprune", "import-checkpoint", str(ckpt), "--method", "evit", "--base",
             "vit_tiny_patch16_224", "-o", str(folder)],
            cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "300"})
        assert second.returncode == 1 and second.stdout == ""
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert lines[0].startswith(f"Error: {folder} is in use by pid {first.pid} on ") and "(save)" in lines[0]
    finally:
        first.stdin.write("\n")
        first.stdin.flush()
        assert first.stdout.readline().strip() == "saved"
        first.wait(timeout=60)
    assert first.returncode == 0
    loaded = vitprune.load(folder)  # whole, and the first process's model
    assert same_weights(loaded.state_dict(), vit(1).state_dict())


# ------------------------------------------------------------------------------------------ clean-up, foreign files


def test_cleanup_removes_dead_processes_staging_never_a_live_ones(tmp_path):
    folder = vitprune.save(vit(1), tmp_path / "out")
    versions = folder / STORE / "versions"
    from vitprune.hub.save import _host

    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for who, pid in (("live", live.pid), ("dead", dead.pid)):
            (versions / f"v~{_host()}~{pid}~{who}").mkdir()
            (versions / f"v~{_host()}~{pid}~{who}" / "model.safetensors").write_bytes(b"half")
            (folder / f".config.json~{_host()}~{pid}~{who}").symlink_to("nowhere")
        (versions / f"v~other-host~{dead.pid}~far").mkdir()  # another host's: its pid means nothing here
        vitprune.save(vit(2), folder)
        names = {p.name for p in versions.iterdir()} | {p.name for p in folder.iterdir()}
        assert f"v~{_host()}~{live.pid}~live" in names and f".config.json~{_host()}~{live.pid}~live" in names
        assert f"v~{_host()}~{dead.pid}~dead" not in names and f".config.json~{_host()}~{dead.pid}~dead" not in names
        assert f"v~other-host~{dead.pid}~far" in names
    finally:
        live.stdin.close()
        live.wait()


@pytest.mark.parametrize("name, content", [
    ("config.json", json.dumps({"architecture": "resnet50", "num_classes": 1000})),  # someone's timm folder
    ("README.md", "# My notes\n\nHand-written, not a vitprune card.\n"),
])
def test_save_never_overwrites_a_config_or_readme_vitprune_did_not_write(name, content, tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / name).write_text(content)
    with pytest.raises(OutputFolderError, match=f"{name} was not written by vitprune"):
        vitprune.save(vit(1), folder)
    assert (folder / name).read_text() == content and sorted(p.name for p in folder.iterdir()) == [STORE, name]


def test_resave_over_a_folder_saved_before_the_versioned_layout(tmp_path):
    """Plain files written by an earlier vitprune (its card and config are recognised as vitprune's)."""
    src = vitprune.save(vit(1), tmp_path / "src", extra_files={"report.json": "{}"})
    legacy = tmp_path / "legacy"
    make_legacy(src, legacy)
    (legacy / "notes.txt").write_text("mine")
    vitprune.save(vit(2), legacy)
    ref = vit(2).state_dict()
    assert same_weights(vitprune.load(legacy).state_dict(), ref)
    # files this save does not write are left alone
    assert (legacy / "notes.txt").read_text() == "mine" and (legacy / "report.json").read_text() == "{}"


def test_where_symlinks_cannot_be_made_files_are_replaced_one_by_one(tmp_path, monkeypatch):
    """Windows without developer mode, some network shares: os.symlink fails; each file is still atomic."""
    import errno

    def no_symlinks(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    folder = vitprune.save(vit(1), tmp_path / "out")
    vitprune.save(vit(2), folder)
    assert not any(p.is_symlink() for p in folder.iterdir())
    ref = vit(2).state_dict()
    assert same_weights(vitprune.load(folder).state_dict(), ref)
    assert list((folder / STORE / "versions").iterdir()) == []


def test_import_checkpoint_refuses_a_folder_with_someone_elses_readme(tmp_path):
    from typer.testing import CliRunner

    from vitprune.cli.main import app

    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "README.md").write_text("# Our lab's model\n")
    res = CliRunner().invoke(app, ["import-checkpoint", str(tmp_path / "any.pth"), "--method", "evit", "-o",
                                   str(folder)])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"{folder}/README.md was not written by vitprune" in res.output
    assert (folder / "README.md").read_text() == "# Our lab's model\n"
