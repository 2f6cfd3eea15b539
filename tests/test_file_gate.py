"""The file gate (vitprune/files.py) and the holes it closes, each with a real payload: planted symlinks (absolute
and ``../``), real FIFOs, a real pickle that would write a marker file, a push with every upload recorded by the
loopback fake Hub, an ONNX file searched for local paths, a run that must leave the user's own files alone.

Also a static check: no module under vitprune/ deletes or opens files except through the gate."""
from __future__ import annotations

import ast
import json
import os
import pickle
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import vitprune
from tests.side_by_side import Started, selected
from tests.test_train_utils import digits_folder, save_tiny_vit, tiny_vit
from vitprune import files, tensorfiles
from vitprune.errors import ModelNotFoundError, OutputFolderError, VitpruneError
from tests.hostile import WritesAMarker

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vitprune"


def _cli(*cmd: str, cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
                "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "vitprune", *cmd], capture_output=True, text=True, env=full_env,
                          cwd=str(cwd), timeout=timeout)


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert [x for x in lines if x.startswith("Error:")] == lines[-1:], res.stderr[-3000:]
    return lines[-1]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, request):
    """The ``python -m vitprune`` runs of this module's tests, each prepared in a folder of its own by the
    ``prepare_*`` function beside its test and started side by side (each is seconds of imports) for the tests
    this run selected; a test checks its own with ``cli_runs.result(key)``, which gives ``(folder, process)``."""
    calls = {}
    for test, prepare in PREPARE.items():
        for params in selected(request, test):
            key = f"{test}{sorted(params.items())}"
            folder = tmp_path_factory.mktemp("cli-run")
            argv, timeout = prepare(folder, **params)
            calls[key] = lambda folder=folder, argv=argv, timeout=timeout: (folder, _cli(*argv, cwd=folder,
                                                                                          timeout=timeout))
    runs = Started(calls)
    yield runs
    runs.close()


def run_of(cli_runs, request) -> tuple[Path, subprocess.CompletedProcess]:
    """The requesting test's own process from ``cli_runs``."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    return cli_runs.result(f"{request.node.originalname}{sorted(params.items())}")




# ------------------------------------------------------------------------------------------ the gate itself


def test_inside_refuses_absolute_dotdot_and_links_out(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "a.txt").write_text("a")
    (outside / "secret").write_text("s")
    os.symlink(outside / "secret", root / "abs-link")
    os.symlink("../outside/secret", root / "rel-link")
    os.symlink("sub/a.txt", root / "in-link")
    assert files.inside(root, "sub/a.txt") == (root / "sub" / "a.txt").resolve()
    assert files.inside(root, "in-link") == (root / "sub" / "a.txt").resolve()  # a link that stays inside is fine
    for name, why in [("/etc/passwd", "absolute"), ("../outside/secret", "'..'"), ("sub/../../outside", "'..'"),
                      ("abs-link", "leads out"), ("rel-link", "leads out"), ("", "empty")]:
        with pytest.raises(files.RefusedPath, match=why):
            files.inside(root, name)


def test_open_regular_refuses_a_fifo_and_a_device_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # nobody writes to it: a plain open() would block forever
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(files.RefusedPath, match="not a regular file"):
            files.open_regular(path)
        with pytest.raises(files.RefusedPath):
            files.read_bytes(path)
    (tmp_path / "f").write_bytes(b"12345")
    os.symlink(tmp_path / "f", tmp_path / "link")
    assert files.read_bytes(tmp_path / "link") == b"12345"
    with pytest.raises(OSError):  # O_NOFOLLOW: a final link is not followed when asked not to
        files.read_bytes(tmp_path / "link", follow_symlinks=False)
    with pytest.raises(files.RefusedPath, match="larger than 4 bytes"):
        files.read_bytes(tmp_path / "f", limit=4)


def test_writes_and_deletions_refuse_a_symlinked_folder_and_never_follow_links(tmp_path):
    root, outside = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("theirs")
    os.symlink(outside, root / "checkpoints")
    with pytest.raises(files.RefusedPath, match="is a symlink"):
        files.write_atomic(root / "checkpoints" / "last.pt", b"x", root=root)
    with pytest.raises(files.RefusedPath, match="is a symlink"):
        files.remove(root / "checkpoints" / "keep.txt", root=root)
    with pytest.raises(files.RefusedPath, match="not a folder"):
        files.remove_tree(root / "checkpoints", root=root)  # the link itself is not a folder vitprune made
    with pytest.raises(files.RefusedPath, match="not inside"):
        files.remove(outside / "keep.txt", root=root)
    # a folder vitprune made, holding a link out: the link goes, its target stays
    made = root / "made"
    made.mkdir()
    os.symlink(outside, made / "link-out")
    assert files.remove_tree(made, root=root) and not made.exists()
    assert files.remove(root / "checkpoints", root=root)  # a link is removed as a link
    assert (outside / "keep.txt").read_text() == "theirs"
    files.write_atomic(root / "a" / "b.txt", "ok", root=root)
    assert (root / "a" / "b.txt").read_text() == "ok" and [p.name for p in (root / "a").iterdir()] == ["b.txt"]


def test_read_tensors_reads_weights_and_refuses_a_pickle_that_runs_code(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(state, tmp_path / "ok.bin")
    assert torch.equal(tensorfiles.read_tensors(tmp_path / "ok.bin")["w"], state["w"])
    marker = tmp_path / "marker"
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(WritesAMarker(marker)))
    with pytest.raises(Exception):
        tensorfiles.read_tensors(tmp_path / "evil.bin")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ static check

#: calls allowed outside vitprune/files.py, each with its reason
ALLOWED = {
    ("vitprune/data/base.py", "Image.open"): "decodes the file object files.open_regular opened",
    ("vitprune/data/shards.py", "tarfile.open"): "reads the file object files.open_regular opened (fileobj=)",
    ("vitprune/report/plots.py", "Image.open"): "decodes the file object files.open_regular opened",
    ("vitprune/data/images.py", "Image.open"): "decodes the file object files.open_regular opened",
    ("vitprune/cli/catalog.py", "read_text"): "the package's own catalog.json, next to the module",
    ("vitprune/cli/catalog.py", "write_text"): "regenerates the package's own catalog.json (a developer command)",
    ("vitprune/hub/limits.py", "open"): "/proc/meminfo, the kernel's memory figures (not a user file)",
    ("vitprune/exporter/quantize.py", "read_text"): "/proc/cpuinfo, the CPU's flags (not a user file)",
}
#: (module, function) pairs that delete or open files
FORBIDDEN_CALLS = {("shutil", "rmtree"), ("os", "remove"), ("os", "unlink"), ("os", "rmdir"), ("torch", "load")}
#: methods of pathlib.Path that open, write or delete (``x.unlink()`` and friends on any object)
FORBIDDEN_METHODS = {"unlink", "rmdir", "read_text", "read_bytes", "write_text", "write_bytes"}


def _check(path: Path, rel: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = None
        if isinstance(f, ast.Name) and f.id == "open":
            name = "open"
        elif isinstance(f, ast.Attribute):
            base = f.value.id if isinstance(f.value, ast.Name) else None
            if (base, f.attr) in FORBIDDEN_CALLS:
                name = f"{base}.{f.attr}"
            elif f.attr in FORBIDDEN_METHODS:
                name = f".{f.attr}"
            elif f.attr == "open" and base in ("Image", "os", "io", "tarfile", "gzip"):
                name = f"{base}.open" if base != "Image" else None  # Image.open of bytes is checked below
            if base == "Image" and f.attr == "open" and not (node.args and isinstance(node.args[0], ast.Call)):
                name = "Image.open"
            if f.attr == "load_file":
                name = "load_file"
        if name and (rel, name.lstrip(".")) not in ALLOWED:
            found.append(f"{rel}:{node.lineno}: {name}")
    return found


def _violations(path: Path) -> list[str]:
    return _check(path, path.relative_to(ROOT).as_posix())


_violations.__wrapped__ = _check  # type: ignore[attr-defined]


@pytest.mark.slow
def test_no_module_opens_or_deletes_files_outside_the_gate():
    """Only vitprune/files.py calls open/os.remove/os.unlink/Path.unlink/shutil.rmtree, and only its torch half
    vitprune/tensorfiles.py calls torch.load (on a file files.py opened); a reader of a user's file elsewhere would
    skip its checks (a FIFO, a link out, a pickle)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name == "vitprune/tensorfiles.py":
            found += [v for v in _violations(path) if not v.endswith(": torch.load")]
        elif name != "vitprune/files.py":
            found += _violations(path)
    assert found == []


def test_the_static_check_sees_what_it_forbids(tmp_path):
    gate = [ROOT / "vitprune" / "files.py", ROOT / "vitprune" / "tensorfiles.py"]  # the gate calls all of them
    names = {v.rsplit(": ", 1)[1] for probe in gate for v in _violations(probe)}
    assert {"os.unlink", "shutil.rmtree", "torch.load", "os.rmdir"} <= names
    probe = tmp_path / "probe.py"
    probe.write_text("open('x')\nPath('x').unlink()\nos.remove('x')\nImage.open(path)\n")
    tree_names = {v.rsplit(": ", 1)[1] for v in _violations.__wrapped__(probe, "probe.py")}
    assert tree_names == {"open", ".unlink", "os.remove", "Image.open"}


# ------------------------------------------------------------------------------------------ hole: current link


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["absolute", "relative"])
def test_a_planted_current_link_is_refused_and_deletes_nothing(tmp_path, kind):
    folder, victim = tmp_path / "model", tmp_path / "victim"
    save_tiny_vit(folder, depth=2)
    victim.mkdir()
    (victim / "marker.txt").write_text("precious")
    current = folder / ".vitprune" / "current"
    current.unlink()
    os.symlink(victim if kind == "absolute" else "../../victim", current)
    with pytest.raises(OutputFolderError, match=r"\.vitprune/current .*not a link vitprune made"):
        vitprune.save(tiny_vit(depth=2), folder)
    assert (victim / "marker.txt").read_text() == "precious"
    with pytest.raises(VitpruneError, match="not a link vitprune made"):  # nor read through it
        vitprune.load(folder)


def prepare_planted_current(tmp_path):
    out, victim = tmp_path / "vitprune-out", tmp_path / "victim"
    victim.mkdir()
    (victim / "marker.txt").write_text("precious")
    (out / ".vitprune").mkdir(parents=True)
    os.symlink("../../victim", out / ".vitprune" / "current")
    return ("compress", "demo", "-m", "evit", "--epochs", "1", "-o", str(out), "--no-speed", "--quiet",
            "--overwrite"), 600


@pytest.mark.slow
def test_compress_into_a_folder_with_a_planted_current_link_is_one_line(cli_runs, request):
    tmp_path, res = run_of(cli_runs, request)  # prepare_planted_current's folder and run
    out, victim = tmp_path / "vitprune-out", tmp_path / "victim"
    assert "not a link vitprune made" in _one_error_line(res)
    assert (victim / "marker.txt").read_text() == "precious"
    assert not (out / "checkpoints").exists() and "epoch 1/1" not in res.stderr  # refused before training


# ------------------------------------------------------------------------------------------ hole: push


@pytest.fixture
def online_hub(monkeypatch):
    from huggingface_hub import constants

    from tests.fakehub import FakeHub

    with FakeHub("hf_FAKEgateToken0123") as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "hf_FAKEgateToken0123")
        yield hub


def _pushable(folder: Path, report: dict) -> Path:
    vitprune.save(tiny_vit(depth=2), folder, base_model="tests: tiny random ViT",
                  extra_files={"report.json": json.dumps(report) + "\n"})
    return folder


@pytest.mark.slow
def test_push_never_sends_a_file_from_outside_the_folder(tmp_path, online_hub):
    secret = tmp_path / "home" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("PRIVATE KEY\n")
    folder = _pushable(tmp_path / "run", {"command": "vitprune compress demo -m evit"})
    from vitprune.hub.save import current_version

    version = current_version(folder)
    (version / "report.json").unlink()
    os.symlink(secret, version / "report.json")  # a link inside the version folder, leading out
    with pytest.raises(vitprune.errors.PushError, match="report.json .* leads outside"):
        vitprune.push(folder, "alice/gate")
    assert online_hub.repos == {}


@pytest.mark.slow
def test_push_takes_card_images_from_image_tags_outside_code_blocks_only(tmp_path, online_hub):
    folder = _pushable(tmp_path / "run", {"command": "vitprune compress demo --note '![x](checkpoints/last.pt)' "
                                                     "'<img src=\"notes/private.png\">'"})
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.pt").write_bytes(b"optimizer state")
    (folder / "notes").mkdir()
    (folder / "notes" / "private.png").write_bytes(b"private")
    (folder / "pareto.png").write_bytes(b"a shown image")
    from vitprune.report.card import render_card

    card = render_card(folder)
    assert "checkpoints/last.pt" in card  # the recorded command is shown in the card's code block
    from vitprune.hub.push import card_images

    assert card_images(card + "\n![Pareto](pareto.png)\n") == ["pareto.png"]
    assert card_images("```\n![x](a.png)\n```\n`![y](b.png)`\n\n    ![z](c.png)\n\n<img src='d.png'>") == ["d.png"]
    vitprune.push(folder, "alice/gate")
    sent = online_hub.files("alice/gate")
    assert "checkpoints/last.pt" not in sent and "notes/private.png" not in sent
    assert sorted(sent) == ["README.md", "config.json", "model.safetensors", "report.json"]


@pytest.mark.slow
def test_push_include_logs_skips_wandb_latest_run_link_with_a_note(tmp_path, online_hub):
    folder = _pushable(tmp_path / "run", {})
    run = folder / "logs" / "wandb" / "offline-run-1"
    run.mkdir(parents=True)
    (run / "run-1.wandb").write_bytes(b"events")
    (folder / "logs" / "summary.csv").write_text("epoch,lr\n1,0.1\n")
    os.symlink("offline-run-1", folder / "logs" / "wandb" / "latest-run")
    os.symlink(tmp_path, folder / "logs" / "out-link")
    result = vitprune.push(folder, "alice/gate", include=["logs"])
    sent = online_hub.files("alice/gate")
    assert {"logs/summary.csv", "logs/wandb/offline-run-1/run-1.wandb"} <= set(sent)
    assert not any("latest-run" in p or "out-link" in p for p in sent)
    assert "not uploaded: logs/out-link, logs/wandb/latest-run (symlinks)" in result.notes


# ------------------------------------------------------------------------------------------ hole: code from a model folder


def _timm_folder(folder: Path, model_args: dict | None = None) -> Path:
    """A plain timm folder (timm's own save_for_hf, no vitprune section) holding pytorch_model.bin."""
    from timm.models._hub import save_for_hf

    model = tiny_vit(depth=2)
    save_for_hf(model, str(folder), safe_serialization=False)
    if model_args is not None:
        cfg = json.loads((folder / "config.json").read_text())
        cfg["model_args"] = {**cfg.get("model_args", {}), **model_args}
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.slow
def test_a_timm_folder_with_pytorch_model_bin_loads_as_data(tmp_path):
    folder = _timm_folder(tmp_path / "timm")
    assert (folder / "pytorch_model.bin").is_file() and not (folder / "model.safetensors").exists()
    model = vitprune.load_model(str(folder))
    ref = tensorfiles.read_tensors(folder / "pytorch_model.bin")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref.items())


def test_a_pickle_as_pytorch_model_bin_runs_nothing_and_is_one_line(tmp_path):
    folder, marker = _timm_folder(tmp_path / "timm"), tmp_path / "marker"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(WritesAMarker(marker)))
    with pytest.raises(ModelNotFoundError, match="pytorch_model.bin is not a file of tensors"):
        vitprune.load_model(str(folder))
    assert not marker.exists()


@pytest.mark.parametrize("args", [{"checkpoint_path": "PAYLOAD"}, {"pretrained_cfg_overlay": {"file": "PAYLOAD"}},
                                  {"pretrained_cfg": {"file": "PAYLOAD"}}])
def test_unknown_model_args_are_refused_before_timm_sees_them(tmp_path, args):
    payload, marker = tmp_path / "payload.pth", tmp_path / "marker"
    payload.write_bytes(pickle.dumps(WritesAMarker(marker)))
    args = json.loads(json.dumps(args).replace("PAYLOAD", str(payload)))
    folder = _timm_folder(tmp_path / "timm", args)
    with pytest.raises(ModelNotFoundError, match=f"model_args {next(iter(args))!r} is not a setting vitprune "
                                                 "passes to timm"):
        vitprune.load_model(str(folder))
    assert not marker.exists()


@pytest.mark.slow
def test_the_model_args_vitprune_and_timm_write_are_accepted(tmp_path):
    """What timm's own save_for_hf records for the models vitprune tests on (a ViT with registers, an EVA02 with
    rotary embeddings) and what vitprune's transformers conversion writes all pass the allow-list."""
    from timm.models._hub import save_for_hf

    from vitprune.hub.load import MODEL_ARGS

    for name, kw in [("vit_tiny_patch16_224", dict(reg_tokens=2, no_embed_class=True, class_token=False,
                                                    global_pool="avg", qkv_bias=False)),
                     ("eva02_tiny_patch14_224", dict(img_size=28, depth=1))]:
        model = timm_create(name, kw)
        save_for_hf(model, str(tmp_path / name), safe_serialization=True)
        args = json.loads((tmp_path / name / "config.json").read_text()).get("model_args", {})
        assert set(args) <= MODEL_ARGS, set(args) - MODEL_ARGS
        vitprune.load_model(str(tmp_path / name))  # and it loads
    converted = {"img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim", "depth",
                 "num_heads", "mlp_ratio", "qkv_bias", "act_layer", "init_values", "reg_tokens", "no_embed_class"}
    assert converted <= MODEL_ARGS  # vitprune/hub/transformers.py's conversion writes these


def timm_create(name: str, kw: dict):
    import timm

    base = dict(img_size=32, patch_size=4, depth=1, embed_dim=48, num_heads=3, num_classes=10)
    return timm.create_model(name, pretrained=False, **{**(base if "eva" not in name else
                                                              dict(embed_dim=48, num_heads=3, num_classes=10)), **kw})


# ------------------------------------------------------------------------------------------ hole: run deletes files


def prepare_users_files(tmp_path):
    model = save_tiny_vit(tmp_path / "tiny", depth=2)
    data = digits_folder(tmp_path / "digits", per_class=4, val_per_class=1)
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "mine.txt").write_text("my notes")
    return ("compress", str(model), "-m", "evit", "--keep-rate", "0.7", "--data", str(data), "-o", str(out),
            "--epochs", "1", "--batch-size", "8", "--no-augment", "--no-speed", "--quiet"), 600


@pytest.mark.slow
def test_a_run_keeps_the_users_own_files_in_checkpoints(cli_runs, request):
    tmp_path, res = run_of(cli_runs, request)  # prepare_users_files's folder and run
    out = tmp_path / "out"
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "checkpoints" / "mine.txt").read_text() == "my notes"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["mine.txt"]  # the run's own files went


def prepare_planted_link(tmp_path, planted):
    model = save_tiny_vit(tmp_path / "tiny", depth=2)
    data = digits_folder(tmp_path / "digits", per_class=4, val_per_class=1)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / planted)
    return ("compress", str(model), "-m", "evit", "--keep-rate", "0.7", "--data", str(data), "-o", str(out),
            "--epochs", "1", "--batch-size", "8", "--no-augment", "--no-speed", "--quiet", "--logger", "csv"), 600


@pytest.mark.slow
@pytest.mark.parametrize("planted", ["checkpoints", "logs"])
def test_a_planted_checkpoints_or_logs_link_is_refused_in_one_line(cli_runs, request, planted):
    tmp_path, res = run_of(cli_runs, request)  # prepare_planted_link's folder and run
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    assert f"{planted} is a symlink" in _one_error_line(res)
    assert list(elsewhere.iterdir()) == []
    assert not (out / "model.safetensors").exists()


# ------------------------------------------------------------------------------------------ hole: onnx paths


@pytest.mark.slow
def test_model_onnx_holds_no_local_paths(tmp_path):
    pytest.importorskip("onnxscript")
    from vitprune.exporter import export_onnx

    path = tmp_path / "m.onnx"
    export_onnx(vitprune.apply_method(tiny_vit(depth=2), "evit", keep_rate=0.7), path, (3, 32, 32))
    data = path.read_bytes()
    places = {str(tmp_path), sys.prefix, sysconfig.get_paths()["purelib"], str(Path.home()), str(ROOT),
              *site.getsitepackages()}
    for place in places:
        assert place.encode() not in data, place
    assert b"site-packages" not in data and b".py\"" not in data and b".py:" not in data
    import onnx

    graph = onnx.load(str(path))  # the token check's module scopes stay; nothing else rides along
    assert {p.key for n in graph.graph.node for p in n.metadata_props} <= {"pkg.torch.onnx.name_scopes"}


# ------------------------------------------------------------------------------------------ hole: fifo


def prepare_fifo(tmp_path, where):
    import io
    import tarfile

    data = tmp_path / "shards"
    for split in ("train", "val"):
        (data / split).mkdir(parents=True)
        with tarfile.open(data / split / "s0.tar", "w") as tf:
            for name, payload in (("k0.png", b"\x89PNG"), ("k0.cls", b"0")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    if where == "train shard":
        os.mkfifo(data / "train" / "a0.tar")
    else:
        os.mkfifo(data / "classes.txt")
    return ("eval", "demo", "--data", str(data)), 240  # a hang is a timeout error


@pytest.mark.slow
@pytest.mark.parametrize("where", ["train shard", "classes.txt"])
def test_a_fifo_in_the_data_is_refused_quickly_in_one_line(cli_runs, request, where):
    pytest.importorskip("webdataset")
    _, res = run_of(cli_runs, request)  # prepare_fifo's folder and run
    line = _one_error_line(res)
    assert "not a regular file" in line and ("a0.tar" in line or "classes.txt" in line)


PREPARE = {  # test -> its prepare function: (folder, **the test's parameters) -> (argv, timeout)
    "test_compress_into_a_folder_with_a_planted_current_link_is_one_line": prepare_planted_current,
    "test_a_run_keeps_the_users_own_files_in_checkpoints": prepare_users_files,
    "test_a_planted_checkpoints_or_logs_link_is_refused_in_one_line": prepare_planted_link,
    "test_a_fifo_in_the_data_is_refused_quickly_in_one_line": prepare_fifo,
}
