"""`vitprune push` against a loopback HTTP server that implements the Hub endpoints huggingface_hub calls
(tests/fakehub.py): files arrive byte-identical, the card is regenerated with the metrics, the dry run sends
nothing, the token never shows, and every failure is one line, exit 1, with the local folder unchanged."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, constants
from typer.testing import CliRunner

from tests.fakehub import FakeHub
from tests.test_card import make_saved_folder
from vitprune.cli.main import app
from vitprune.errors import PushError
from vitprune.report.card import render_card

TOKEN = "hf_FAKEtokenVitprune7f3c9a1e"  # a recognisable value to grep for
REPO = "alice/demo-evit"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A saved compressed folder, plus what a push must leave behind: training checkpoints and a hidden file."""
    folder = make_saved_folder(tmp_path_factory.mktemp("push") / "evit-demo")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.pt").write_bytes(b"optimizer state" * 100)
    (folder / ".notes").write_text("local only")
    return folder


@pytest.fixture
def hub():
    with FakeHub(TOKEN) as h:
        yield h


def tree(folder: Path) -> dict[str, str]:
    """Every file under the folder (hidden ones too) with its sha256."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def uploadable(folder: Path) -> dict[str, bytes]:
    return {rel: (folder / rel).read_bytes() for rel in tree(folder)
            if not rel.startswith((".", "checkpoints/")) and rel != "README.md"}


def cli_env(tmp_path: Path, endpoint: str, token: str | None = TOKEN, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update({"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0",
                "HF_DEBUG": "1", "HF_HUB_VERBOSITY": "debug", "HF_HUB_DISABLE_TELEMETRY": "1",
                "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    if token is not None:
        env["HF_TOKEN"] = token
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitprune.cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------------------ success


@pytest.mark.slow
def test_push_cli_uploads_byte_identical_files_and_never_shows_the_token(saved, hub, tmp_path):
    before = tree(saved)
    res = run_cli(["push", str(saved), "--repo", REPO], cli_env(tmp_path, hub.url))
    everything = res.stdout + res.stderr
    assert res.returncode == 0, everything
    assert TOKEN not in everything  # HF_DEBUG=1 and debug verbosity: every request is logged, without the token
    assert "curl" in everything  # (proof that the debug log of the requests was on)
    files = hub.files(REPO)
    expected = uploadable(saved)
    assert {p: d for p, d in files.items() if p != "README.md"} == expected  # byte-identical, nothing else
    assert "checkpoints/last.pt" not in files and ".notes" not in files
    card = files["README.md"].decode()
    assert card == render_card(saved, repo_id=REPO)  # regenerated: it names the repo it lives in
    assert 'vitprune.load("hf-hub:alice/demo-evit")' in card and "| top-1 (%) | 98.33 | 96.10 | -2.23 pt |" in card
    assert ModelCard(card).data.to_dict()["tags"][-1] == "evit"
    writes = [r for r in hub.requests if r.kind in ("create", "preupload", "commit")]
    assert [r.kind for r in writes] == ["create", "preupload", "commit"] and all(r.authorized for r in writes)
    assert hub.repos[REPO].private is False
    assert f"Done: {hub.url}/{REPO}" in res.stdout
    assert tree(saved) == before  # the local folder (its README.md included) is untouched


@pytest.mark.slow
def test_push_library_lfs_private_branch_then_load_from_the_hub(saved, hub, tmp_path, monkeypatch):
    """Large files through the LFS batch API (the server asks for LFS, the client is told not to use Xet), a private
    repo, a branch; then vitprune.load("hf-hub:...@branch") downloads the pushed model and rebuilds it exactly."""
    import vitprune

    hub.lfs_threshold = 1024
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    before = tree(saved)
    result = vitprune.push(saved, REPO, private=True, revision="exp-1")
    assert result.revision == "exp-1" and result.private and result.url == f"{hub.url}/{REPO}"
    assert "lfs-batch" in hub.kinds() and "lfs-verify" in hub.kinds()
    assert hub.repos[REPO].private is True
    files = hub.files(REPO, "exp-1")
    assert {p: d for p, d in files.items() if p != "README.md"} == uploadable(saved)
    assert hub.files(REPO, "main") == {}  # only the branch got the commit
    assert tree(saved) == before

    # a fresh process (huggingface_hub fixes its download URLs at import): HF_ENDPOINT at the fake Hub, empty cache
    code = (
        "import sys, torch, vitprune\n"
        f"pulled = vitprune.load('hf-hub:{REPO}@exp-1')\n"
        "local = vitprune.load(sys.argv[1])\n"
        "assert pulled.vitprune_method.options_dict() == local.vitprune_method.options_dict()\n"
        "x = torch.randn(2, 3, 32, 32)\n"
        "with torch.inference_mode():\n"
        "    assert torch.equal(pulled(x), local(x))\n"
        "print('restored', pulled.vitprune_method.name, pulled.vitprune_source)\n")
    env = cli_env(tmp_path, hub.url, HF_DEBUG="0", HF_HUB_VERBOSITY="warning")
    res = subprocess.run([sys.executable, "-c", code, str(saved)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"restored evit hf-hub:{REPO}@exp-1" in res.stdout
    assert {"resolve", "info", "tree"} <= set(hub.kinds())


def test_dry_run_lists_files_and_card_and_sends_nothing(saved, hub, monkeypatch):
    # pointed at the fake Hub, online, with a token: any request would land there
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    before = tree(saved)
    res = CliRunner().invoke(app, ["push", str(saved), "--repo", REPO, "--dry-run"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert hub.requests == []  # not one request, not even the metadata check
    listing, card = res.stdout.split("README.md (model card)")
    for rel in list(uploadable(saved)) + ["README.md"]:
        assert rel in listing
    assert "last.pt" not in listing and ".notes" not in listing
    assert "not uploaded: checkpoints/ (training state)" in listing
    expected = render_card(saved, repo_id=REPO)
    for line in expected.strip().splitlines():  # the whole card that would go is printed
        assert line.strip() in card
    assert "| top-1 (%) | 98.33 | 96.10 | -2.23 pt |" in card
    assert "nothing was sent" in res.stdout
    assert TOKEN not in res.output
    assert tree(saved) == before


def test_dry_run_json_matches_the_folder(saved, tmp_path, monkeypatch):
    res = CliRunner().invoke(app, ["push", str(saved), "--repo", REPO, "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    sizes = {f["path"]: f["size"] for f in data["files"]}
    assert sizes == {**{p: len(d) for p, d in uploadable(saved).items()},
                     "README.md": len(render_card(saved, repo_id=REPO).encode())}
    assert data["dry_run"] is True and data["url"] is None


def test_push_flags_reach_the_library_as_its_settings(saved):
    """``--private``, ``--revision``, ``--include`` (derived from ``PushSettings``) arrive as ``vitprune.push``'s
    keywords: the dry run's plan is the library's for the same settings."""
    import vitprune

    res = CliRunner().invoke(app, ["push", str(saved), "-r", REPO, "--dry-run", "--json", "--private",
                                   "--revision", "exp-1", "--include", "checkpoints", "-m", "a message"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["private"], data["revision"], data["dry_run"]) == (True, "exp-1", True)
    assert "checkpoints/last.pt" in {f["path"] for f in data["files"]}  # --include, on purpose
    lib = vitprune.push(saved, REPO, dry_run=True, private=True, revision="exp-1", include=["checkpoints"],
                        commit_message="a message")
    assert lib.to_dict() == data


# ------------------------------------------------------------------------------------------ failures


@pytest.mark.slow
def test_server_error_subprocess_one_line_no_token_anywhere(saved, hub, tmp_path):
    hub.fail["create"] = (500, "internal error while creating the repo")
    before = tree(saved)
    res = run_cli(["push", str(saved), "--repo", REPO], cli_env(tmp_path, hub.url, HF_DEBUG="0",
                                                                  HF_HUB_VERBOSITY="warning"))
    assert res.returncode == 1
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: the Hub answered 500") and "internal error while creating the repo" in lines[0]
    assert "Traceback" not in res.stderr and TOKEN not in res.stderr
    assert tree(saved) == before


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"


@pytest.mark.slow
@pytest.mark.parametrize("case, message", [
    ("no-token", "no Hugging Face token: set HF_TOKEN or run `hf auth login`"),
    ("bad-token", "the Hub refused the token (401)"),
    ("invalid-name", "invalid repo name 'alice/bad name'"),
    ("one-part-name", "invalid repo name 'justaname': write it as user/name"),
    ("forbidden-commit", "no write access to alice/demo-evit (403) (you cannot write to alice)"),
    ("server-error", "the Hub answered 503 (server error) (maintenance)"),
    ("unreachable", "could not reach the Hub at http://127.0.0.1:"),
    ("offline", "HF_HUB_OFFLINE is set"),
    ("not-a-folder", "has no config.json"),
])
def test_failures_are_one_line_exit_1_folder_untouched(case, message, saved, hub, tmp_path, monkeypatch, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    repo, folder = REPO, saved
    if case == "no-token":
        monkeypatch.delenv("HF_TOKEN")
    elif case == "bad-token":
        monkeypatch.setenv("HF_TOKEN", TOKEN + "-wrong")
    elif case == "invalid-name":
        repo = "alice/bad name"
    elif case == "one-part-name":
        repo = "justaname"
    elif case == "forbidden-commit":
        hub.fail["commit"] = (403, "you cannot write to alice")
    elif case == "server-error":
        hub.fail["create"] = (503, "maintenance")
    elif case == "unreachable":
        monkeypatch.setattr(constants, "ENDPOINT", _closed_port_url())
    elif case == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    elif case == "not-a-folder":
        folder = tmp_path / "empty"
        folder.mkdir()
    before = tree(saved)
    res = CliRunner().invoke(app, ["push", str(folder), "--repo", repo])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert message in lines[0], lines[0]
    assert "Traceback" not in res.output
    assert TOKEN not in res.output and TOKEN not in caplog.text
    assert tree(saved) == before
    if case in ("no-token", "invalid-name", "one-part-name", "offline", "not-a-folder"):
        assert hub.requests == []  # refused before any request
    assert REPO not in hub.repos or hub.files(REPO) == {}  # nothing half-committed


# ------------------------------------------------------------------------------------------ what goes


@pytest.fixture(scope="module")
def cluttered(tmp_path_factory) -> Path:
    """A saved folder next to what a disk holds: a secret, a link to a private file outside, a teacher
    sub-folder, checkpoints, a training log; and outside it, the private file."""
    import vitprune

    root = tmp_path_factory.mktemp("cluttered")
    private = root / "home" / "passwd"
    private.parent.mkdir()
    private.write_text("root:x:0:0:root:/root:/bin/bash\n")
    folder = make_saved_folder(root / "run")
    (folder / "train_log.jsonl").write_text('{"epoch": 1, "loss": 0.5}\n')
    (folder / "api_key.txt").write_text("sk-PRIVATE-do-not-publish\n")
    (folder / ".env").write_text("HF_TOKEN=hf_private\n")
    (folder / "passwd").symlink_to(private)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.pt").write_bytes(b"optimizer state")
    vitprune.save(vitprune.load_model("demo"), folder / "teacher")
    return folder


MODEL_FILES = ["README.md", "config.json", "model.safetensors", "report.json", "train_log.jsonl"]


@pytest.fixture
def online(hub, monkeypatch):
    """The fake Hub as the endpoint, online, with a token: for in-process CLI runs."""
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub


@pytest.mark.slow
def test_push_sends_the_allow_list_only_and_dry_run_lists_exactly_that(cluttered, online):
    before = tree(cluttered)
    dry = CliRunner().invoke(app, ["push", str(cluttered), "--repo", REPO, "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    planned = json.loads(dry.stdout)
    res = CliRunner().invoke(app, ["push", str(cluttered), "--repo", REPO])
    assert res.exit_code == 0, res.output
    files = online.files(REPO)
    assert sorted(files) == MODEL_FILES == sorted(f["path"] for f in planned["files"])
    for rel in MODEL_FILES[1:]:
        assert files[rel] == (cluttered / rel).read_bytes()
    sent = b"".join(files.values())
    assert b"sk-PRIVATE" not in sent and b"root:x:0:0" not in sent and b"hf_private" not in sent
    assert "not uploaded: checkpoints/ (training state)" in planned["notes"]
    assert "not uploaded: api_key.txt, passwd, teacher/ (add with --include)" in planned["notes"]
    assert tree(cluttered) == before


def test_include_adds_the_teacher_on_purpose(cluttered, online):
    res = CliRunner().invoke(app, ["push", str(cluttered), "--repo", REPO, "--include", "teacher"],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    files = online.files(REPO)
    assert sorted(files) == sorted(MODEL_FILES + ["teacher/README.md", "teacher/config.json",
                                                  "teacher/model.safetensors"])
    assert files["teacher/model.safetensors"] == (cluttered / "teacher" / "model.safetensors").read_bytes()
    assert "checkpoints/last.pt" not in files and "--include" in res.stdout


@pytest.mark.parametrize("case", ["allow-listed link out", "included link out", "include outside", "no match"])
def test_files_leading_out_of_the_folder_are_refused_in_one_line(case, cluttered, online, tmp_path):
    folder, extra = cluttered, []
    if case == "allow-listed link out":  # report.json is allow-listed; here it leads to the private file
        folder = tmp_path / "linked"
        shutil.copytree(cluttered, folder, symlinks=True)
        (folder / "report.json").unlink()
        (folder / "report.json").symlink_to(cluttered.parent / "home" / "passwd")
        message = "report.json (a model file) leads outside linked/ (a symlink); push sends only files inside"
    elif case == "included link out":
        extra = ["--include", "pass*"]
        message = "passwd (added by --include) leads outside run/ (a symlink)"
    elif case == "include outside":
        extra = ["--include", "../home/passwd"]
        message = "--include '../home/passwd': give a glob relative to the folder"
    else:
        extra = ["--include", "samples/*.png"]
        message = "--include 'samples/*.png' matches no file in run/"
    for dry in ([], ["--dry-run"]):  # the dry run refuses the same way
        res = CliRunner().invoke(app, ["push", str(folder), "--repo", REPO, *extra, *dry])
        assert res.exit_code == 1
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], res.output
    assert online.requests == []  # refused before anything was sent


def test_card_images_inside_the_folder_go_with_it(cluttered, tmp_path):
    from vitprune.hub.push import card_images, upload_plan

    folder = tmp_path / "with-images"
    shutil.copytree(cluttered, folder, symlinks=True)
    (folder / "images").mkdir()
    (folder / "images" / "tokens map.png").write_bytes(b"\x89PNG tokens")
    (folder / "pareto.png").write_bytes(b"\x89PNG pareto")
    card = ("---\ntags:\n- vitprune\n---\n![kept tokens](images/tokens%20map.png)\n"
            '<img src="./pareto.png" width=300>\n![remote](https://example.com/x.png) ![up](../home/passwd)\n'
            "![missing](images/none.png)\n")
    assert card_images(card) == ["images/tokens map.png", "pareto.png", "images/none.png"]
    plan = {f.path: f for f in upload_plan(folder, card)}
    assert sorted(plan) == sorted(MODEL_FILES + ["images/tokens map.png", "pareto.png"])
    (folder / "pareto.png").unlink()
    (folder / "pareto.png").symlink_to(cluttered.parent / "home" / "passwd")  # a shown image leading out
    with pytest.raises(PushError, match="pareto.png .a model file. leads outside"):
        upload_plan(folder, card)


def test_onnx_export_goes_with_its_external_data_file(cluttered, tmp_path):
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import helper, numpy_helper

    from vitprune.hub.push import upload_plan

    folder = tmp_path / "with-onnx"
    shutil.copytree(cluttered, folder, symlinks=True)
    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])], [weight])
    onnx.save_model(helper.make_model(graph), str(folder / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.weights", size_threshold=0)
    (folder / "other.weights").write_bytes(b"not named by model.onnx")
    paths = [f.path for f in upload_plan(folder, "card")]
    assert "model.onnx" in paths and "model.weights" in paths and "other.weights" not in paths


def test_a_link_a_killed_save_left_ahead_of_its_switch_is_not_sent(cluttered, tmp_path):
    """A save killed before its switch can leave the link of a file the new model adds (here: onnx) dangling; the
    folder is the old model, and a push sends the old model."""
    from vitprune.hub.push import upload_plan

    folder = tmp_path / "killed"
    shutil.copytree(cluttered, folder, symlinks=True)
    (folder / "model.onnx").symlink_to(".vitprune/current/model.onnx")  # the link a save makes, dangling
    assert sorted(f.path for f in upload_plan(folder, "card")) == MODEL_FILES
