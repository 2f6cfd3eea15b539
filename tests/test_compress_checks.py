"""`vitprune compress` checks what it can before the first training step, as a user meets it (real processes):
a bad device, option type, augmentation policy, output path, push target or one-class dataset is one line, exit 1,
and no training starts (no epoch line, no checkpoint, no output folder); a folder holding a finished model is
refused unless --overwrite; two runs into one folder at once: the second is refused while the first finishes;
classes matched to the head by count only are warned about, and --new-head replaces the head; file names with rich
markup in them are printed as they are."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

import vitprune
from tests.side_by_side import Started, selected, together
from tests.test_compress_push import data  # noqa: F401 - the fixture: real digits, 80 train and 30 val images
from tests.test_train_utils import corrupt_png, digit_images, digits_folder, write_folder

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_FAKEtokenVitpruneEarly0c4d"  # a recognisable value to grep for


def env(cwd: Path, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """This checkout's code, offline, no Hub settings of the user's, a private HF_HOME."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    out.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(cwd / ".hf-home"),
                "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "2", **(extra or {})})
    return out


def cli(args: list[str], cwd: Path, extra: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    """``python -m vitprune ARGS`` in ``cwd``, stdout and stderr captured."""
    return subprocess.run([sys.executable, "-m", "vitprune", *args], cwd=cwd, env=env(cwd, extra),
                          capture_output=True, text=True, timeout=300)


def spawn(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vitprune", *args], cwd=cwd, env=env(cwd), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def one_line_error(res: subprocess.CompletedProcess, message: str, code: int = 1) -> str:
    everything = res.stdout + res.stderr
    assert res.returncode == code, everything
    assert "Traceback" not in everything and "epoch 1" not in everything, everything  # no training started
    lines = everything.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], everything
    return lines[0]


def compress_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["compress", "demo", "-m", "evit", "--data", str(data), "-o", str(out), "--epochs", "1",
            "--batch-size", "16", "--no-speed", "--quiet", *extra]


# ------------------------------------------------------------------------------------------ early checks

BAD_INPUT = [
    (["--device", "gpu"], "device 'gpu' is not supported; use --device cuda"),
    (["--device", "tpu"], "device 'tpu' is not supported; use --device cuda (an NVIDIA GPU, or cuda:N) or --device"),
    (["--opt", "keep_rate=abc"], "--keep-rate must be a number, got 'abc'"),
    (["--opt", "fuse=maybe"], "--fuse must be true or false, got 'maybe'"),
    (["--opt", "drop_loc=3,x"], "--drop-loc must be a comma list of integers or none"),
    (["--auto-augment", "foo"], "timm refuses --auto-augment 'foo'"),
    (["--push-to", "alice/bad--name"], "invalid repo name 'alice/bad--name'"),
]
DEVICE_COMMANDS = [["eval", "demo"], ["profile", "demo", "--no-weights", "--no-speed"]]


@pytest.fixture(scope="module")
def refusals(data, tmp_path_factory, request):
    """The one-process refusals of this section, each in a folder of its own, started side by side (each is
    seconds of imports) for the cases this run selected; a test checks its own with ``refusals.result(key)``,
    which gives ``(folder, completed process)``."""
    calls = {}

    def add(key, args_in):  # args_in(folder) -> (args, extra env), called before the process starts
        cwd = tmp_path_factory.mktemp("refusal")
        args, extra = args_in(cwd)
        calls[key] = lambda: (cwd, cli(args, cwd, extra))

    for params in selected(request, "test_bad_input_is_one_line_before_any_training"):
        add(" ".join(params["extra"]), lambda cwd, extra=params["extra"]: (compress_args(data, cwd / "out", *extra),
                                                                          None))
    for params in selected(request, "test_eval_and_profile_share_the_device_check"):
        add(" ".join(params["command"]), lambda cwd, command=params["command"]: ([*command, "--device", "gpu"], None))
    if selected(request, "test_one_class_dataset_is_refused"):
        add("one class", lambda cwd: (["compress", "demo", "-m", "evit", "--data", str(one_class(cwd)), "-o",
                                       str(cwd / "out"), "--no-speed"], None))
    if selected(request, "test_a_folder_holding_someone_elses_config_is_refused_before_training"):
        add("theirs", lambda cwd: (compress_args(data, theirs(cwd)), None))
    runs = Started(calls)
    yield runs
    runs.close()


@pytest.mark.slow
@pytest.mark.parametrize("extra, message", BAD_INPUT)
def test_bad_input_is_one_line_before_any_training(refusals, extra, message):
    cwd, res = refusals.result(" ".join(extra))
    one_line_error(res, message)
    assert not (cwd / "out").exists()  # nothing was created, let alone trained


@pytest.mark.slow
def test_output_that_is_a_file_is_refused_and_left_alone(data, tmp_path):
    plain = tmp_path / "plainfile.txt"
    plain.write_text("mine\n")
    direct, below = together(lambda: cli(compress_args(data, plain), tmp_path),
                             lambda: cli(compress_args(data, plain / "sub"), tmp_path))
    # the flag as the user typed it (-o; --output when spelt out)
    one_line_error(direct, "-o ")
    one_line_error(below, "plainfile.txt is a file")
    assert plain.read_text() == "mine\n"


@pytest.mark.slow
def test_output_that_cannot_be_written_is_refused(data, tmp_path):
    # /proc refuses new entries even to root (chmod would not stop root, which CI may be)
    one_line_error(cli(compress_args(data, Path("/proc/vitprune-out")), tmp_path), "cannot write to /proc")


@pytest.mark.slow
def test_push_to_without_a_token_is_refused_before_training(data, tmp_path):
    online = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}  # no HF_TOKEN, an empty HF_HOME
    # with a token but a bad name the token is never shown (in a folder of its own: the two run at once)
    token_cwd = tmp_path / "with-token"
    token_cwd.mkdir()
    no_token, bad_name = together(
        lambda: cli(compress_args(data, tmp_path / "out", "--push-to", "alice/demo-evit"), tmp_path, online),
        lambda: cli(compress_args(data, token_cwd / "out", "--push-to", "not a repo"), token_cwd,
                    {**online, "HF_TOKEN": TOKEN}))
    one_line_error(no_token, "--push-to alice/demo-evit needs a Hugging Face token")
    one_line_error(bad_name, "invalid repo name")
    assert TOKEN not in bad_name.stdout + bad_name.stderr


def one_class(cwd: Path) -> Path:
    return write_folder(cwd / "one", digit_images("train", 12, classes=(7,)))


@pytest.mark.slow
def test_one_class_dataset_is_refused(refusals):
    one_line_error(refusals.result("one class")[1], "has one class (7)")


@pytest.mark.slow
@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_eval_and_profile_share_the_device_check(refusals, command):
    one_line_error(refusals.result(" ".join(command))[1], "use --device cuda (an NVIDIA GPU, or cuda:N)")


# ------------------------------------------------------------------------------------------ a finished model


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".vitprune" not in p.parts}


@pytest.fixture(scope="module")
def first_run(data, tmp_path_factory):
    """A compress run into a fresh folder; once it holds the folder it is stopped (SIGSTOP) while a second run of
    the same command tries the folder, then let go to finish. Gives the folder, the second run's result, the first
    one's pid and its completed process: the finished model the first run saved is the one
    test_finished_model_is_kept_unless_overwrite_and_an_unfinished_overwrite_resumes starts from (a copy)."""
    from vitprune.hub.lock import read_owner

    cwd = tmp_path_factory.mktemp("first-run")
    out = cwd / "out"
    first = spawn(compress_args(data, out), cwd)
    try:
        t0 = time.time()
        while (read_owner(out) or {}).get("pid") != first.pid:  # the first run holds the folder...
            assert first.poll() is None, first.communicate()
            assert time.time() - t0 < 240, "the first run never took the folder"
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # ...and is held still while the second one tries
        second = cli(compress_args(data, out), cwd)
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    return out, second, first.pid, subprocess.CompletedProcess(first.args, first.returncode, stdout, stderr)


@pytest.mark.slow
def test_finished_model_is_kept_unless_overwrite_and_an_unfinished_overwrite_resumes(first_run, data, tmp_path):
    out = tmp_path / "out"
    finished = first_run[3]  # compress_args(data, out) run to its end, into a folder of its own
    assert finished.returncode == 0, finished.stdout + finished.stderr
    shutil.copytree(first_run[0], out, symlinks=True)
    before = digest(out)
    # the same command again: refused, nothing touched
    one_line_error(cli(compress_args(data, out), tmp_path), "already holds a finished model; add --overwrite")
    assert digest(out) == before
    # --overwrite stopped after one step: the old model is still there and loads; --resume finishes the new run
    stopped = cli(compress_args(data, out, "--overwrite", "--seed", "1", "--max-steps", "1"), tmp_path)
    assert stopped.returncode == 0 and "Stopped after 1/5 steps" in stopped.stderr, stopped.stdout + stopped.stderr
    assert {k: v for k, v in digest(out).items() if not k.startswith(("checkpoints/", "train_log"))} == {
        k: v for k, v in before.items() if not k.startswith("train_log")}
    vitprune.load(out)
    resumed = cli(compress_args(data, out, "--seed", "1", "--resume"), tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = digest(out)
    assert after["model.safetensors"] != before["model.safetensors"] and not (out / "checkpoints").exists()


# ------------------------------------------------------------------------------------------ one run per folder


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused_while_the_first_finishes(first_run):
    out, second, pid, first = first_run
    line = one_line_error(second, f"is in use by pid {pid}")
    assert "(compress)" in line
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Saved" in first.stdout and vitprune.load(out).vitprune_method.name == "evit"


# ------------------------------------------------------------------------------------------ classes and heads


@pytest.mark.slow
def test_classes_matched_by_count_only_are_warned_and_new_head_replaces_the_head(tmp_path):
    names = {i: w for i, w in enumerate("zero one two three four five six seven eight nine".split())}
    words = digits_folder(tmp_path / "words", per_class=4, val_per_class=1, names=names)
    # the demo head's label names are "0".."9": ten folders named otherwise land on it by count only
    common = ["compress", "demo", "-m", "evit", "--data", str(words)]
    res, res_b, res_c = together(  # three runs into three folders, side by side
        lambda: cli([*common, "-o", str(tmp_path / "a"), "--max-steps", "1", "--batch-size", "8", "--no-speed",
                     "--quiet"], tmp_path),
        lambda: cli([*common, "-o", str(tmp_path / "b"), "--max-steps", "1", "--batch-size", "8", "--no-speed",
                     "--quiet", "--new-head"], tmp_path),
        # a dense teacher stage needs a dense model, and a given teacher keeps its own head
        lambda: cli([*common, "--teacher", "demo", "--new-head", "-o", str(tmp_path / "c")], tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    warning = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "COUNT ONLY" in warning[0] and "--new-head" in warning[0], res.stderr
    assert "eight, five, four, ..." in warning[0]  # the folders, sorted, that are not label names
    res = res_b
    assert res.returncode == 0, res.stdout + res.stderr
    assert "head replaced (--new-head)" in res.stderr and "COUNT ONLY" not in res.stderr
    assert (tmp_path / "b" / "checkpoints" / "teacher.pt").is_file()  # the step taken was the teacher stage's
    one_line_error(res_c, "does not go with --teacher")


# ------------------------------------------------------------------------------------------ rich markup


@pytest.mark.slow
def test_file_names_with_markup_are_printed_as_they_are(tmp_path):
    """A class folder holding `bad[/x].png` (a sub-folder `bad[` and a file `x].png`, unreadable): rich would
    read `[/x]` as a closing tag and crash; eval prints the name as it is."""
    data = tmp_path / "odd[/b]"
    write_folder(data / "train", digit_images("train", 2))
    write_folder(data / "val", digit_images("val", 2))
    corrupt_png(data / "val" / "3" / "bad[" / "x].png")
    res = cli(["eval", "demo", "--data", str(data)], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "bad[/x].png" in res.stderr and "odd[/b]" in res.stdout


# ------------------------------------------------------------------------------------------ default folders


def test_default_output_folders_name_the_headline_setting():
    from vitprune.compression import default_output
    from vitprune.methods import create_method

    def folder(method: str, **options) -> str:
        return default_output("demo", method, create_method(method, **options).options).as_posix()

    assert folder("evit", keep_rate=0.7) == "vitprune-out/demo-evit-keep0.7"
    assert folder("evit", keep_rate=0.5) == "vitprune-out/demo-evit-keep0.5"
    assert folder("tome", r=8) == "vitprune-out/demo-tome-r8"
    assert folder("dge", budget=0.5) == "vitprune-out/demo-dge-budget0.5"
    assert folder("sait", mode="fixed", keep_rate=0.7) == "vitprune-out/demo-sait-fixed-keep0.7"
    assert default_output("hf-hub:org/vit-s", "evit", create_method("evit").options).as_posix() == \
        "vitprune-out/vit-s-evit-keep0.7"
    # the README's account of the demo command names the folder it really writes
    readme = (ROOT / "README.md").read_text()
    assert f"`{folder('dynamicvit')}/`" in readme


@pytest.mark.slow
def test_two_settings_without_output_go_to_two_folders(tmp_path, monkeypatch):
    """Keep rates 0.7 and 0.5 used to share `vitprune-out/demo-evit`, the second replacing the first."""
    data = digits_folder(tmp_path / "d", per_class=2, val_per_class=1)
    monkeypatch.chdir(tmp_path)
    first = vitprune.compress("demo", "evit", str(data), epochs=0, batch_size=4, speed=False, keep_rate=0.7)
    second = vitprune.compress("demo", "evit", str(data), epochs=0, batch_size=4, speed=False, keep_rate=0.5)
    assert first.output != second.output
    assert vitprune.load(first.output).vitprune_method.options.keep_rate == 0.7
    assert vitprune.load(second.output).vitprune_method.options.keep_rate == 0.5


def theirs(cwd: Path) -> Path:
    out = cwd / "theirs"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "something-else"}\n')
    return out


@pytest.mark.slow
def test_a_folder_holding_someone_elses_config_is_refused_before_training(refusals):
    """A config.json vitprune did not write (another tool's model) is never replaced, and the run says so before
    it trains, not after hours when the save would fail."""
    cwd, res = refusals.result("theirs")
    one_line_error(res, "was not written by vitprune")
    assert (cwd / "theirs" / "config.json").read_text() == '{"model_type": "something-else"}\n'
