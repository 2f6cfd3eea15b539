"""Upload a saved folder to the Hugging Face Hub: ``create_repo`` + one ``create_commit`` of an explicit file list.

A push sends the model, not the disk. What goes is an allow-list (``upload_plan``): ``config.json``,
``model.safetensors``, ``report.json``, ``train_log.jsonl``, ``model.onnx`` with its external-data file when
present, ``model-int8.onnx`` (``vitprune export --quantize``) when present, the images the model card shows (its own Markdown and HTML image tags, never text inside code blocks or
code spans; relative links inside the folder), and ``README.md`` — the card
regenerated from the folder's ``config.json`` and ``report.json`` (``vitprune.report.card.render_card``) so that it
names the repo it lives in. Nothing else (``checkpoints/``, ``teacher/``, logs, notes, hidden files) goes unless
``include`` patterns (globs relative to the folder; a folder matched brings its files) add it on purpose; hidden
files never go. Every file must be a regular file inside the folder (``vitprune.files.inside``), the model's files
read from its version folder included: a symlink that leads out of it is refused in one line, whether
allow-listed or named by ``include``. Symlinks met inside an included folder (wandb's ``latest-run``) are not
followed: they are skipped, and named in the notes. A dry run computes the same list with the same function and sends
nothing. The local folder is never written, and a failure leaves it exactly as it was.

The token comes from ``token=``, else ``HF_TOKEN``, else the user's ``hf auth login``. It is handed to
huggingface_hub and nothing else: it is never printed, logged or put in an error message (messages from the
server are scrubbed of it too).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Optional
from urllib.parse import unquote, urlparse

from markdown_it import MarkdownIt

from huggingface_hub import CommitOperationAdd, HfApi, constants, errors as hf_errors, get_token
from huggingface_hub.utils import (
    HFValidationError, are_progress_bars_disabled, disable_progress_bars, enable_progress_bars, validate_repo_id,
)

from ..errors import PushError
from ..files import RefusedPath, check_regular, inside
from .save import current_version, is_our_link
from ..report.card import render_card
from ..exporter.core import export
from ..settings import PushSettings, takes_settings

#: the files of a saved folder a push sends (top level, when present), besides the card and the images it shows
ALLOWED = ("config.json", "model.safetensors", "report.json", "train_log.jsonl", "model.onnx", "model-int8.onnx")
#: names an ONNX exporter gives the external-data file beside model.onnx (when the onnx package cannot say)
ONNX_DATA = ("model.onnx.data", "model.onnx_data", "model.data")
#: top-level folders of training state, named in the dry run's notes
EXCLUDED = ("checkpoints",)
CARD_NAME = "README.md"
ONNX_NAME = "model.onnx"


@dataclass
class PushFile:
    path: str  # path in the repo (posix)
    size: int  # bytes (the card: the regenerated card's size)
    source: str  # "folder", "included" or "generated"
    local: Optional[Path] = field(default=None, repr=False)  # the checked file that is read (not for display)


@dataclass
class PushResult:
    repo_id: str
    revision: str
    private: bool
    dry_run: bool
    files: list[PushFile]
    card: str
    url: Optional[str] = None
    commit_url: Optional[str] = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict:
        return {"repo_id": self.repo_id, "revision": self.revision, "private": self.private, "dry_run": self.dry_run,
                "files": [{"path": f.path, "size": f.size, "source": f.source} for f in self.files], "total_bytes": self.total_bytes, "url": self.url,
                "commit_url": self.commit_url, "card": self.card, "notes": self.notes}


# ------------------------------------------------------------------------------------------ checks


def check_repo_id(repo: str) -> str:
    """``user/name`` (an ``hf-hub:`` prefix is accepted); PushError for anything else."""
    repo_id = repo[len("hf-hub:"):] if repo.startswith("hf-hub:") else repo
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushError(f"invalid repo name {repo!r}: write it as user/name (or org/name).")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PushError(f"invalid repo name {repo!r}: use letters, digits, '-', '_' and '.' (no '--' or '..', not "
                        "starting or ending with '-' or '.', at most 96 characters), as user/name.") from None
    return repo_id


_IMG = re.compile(r"""<img\b[^>]*?\bsrc\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def _image_links(card: str) -> list[str]:
    """The targets of the card's image tags: Markdown images and ``<img src>`` in HTML, as a CommonMark parser
    (markdown-it, which rich brings) reads them; text in code blocks and code spans is not markup."""
    links = []
    for tok in MarkdownIt("commonmark").parse(card):
        if tok.type == "html_block":
            links += _IMG.findall(tok.content)
        for child in tok.children or []:
            if child.type == "image" and child.attrs.get("src"):
                links.append(str(child.attrs["src"]))
            elif child.type == "html_inline":
                links += _IMG.findall(child.content)
    return links


def card_images(card: str) -> list[str]:
    """Relative image paths a model card shows (Markdown ``![..](path)`` and HTML ``<img src>`` outside code),
    as repo paths."""
    found = []
    for link in _image_links(card):
        url = urlparse(link)
        if url.scheme or url.netloc or link.startswith(("/", "#")):
            continue  # a web address, an absolute path, an anchor
        rel = PurePosixPath(unquote(url.path))
        if rel.parts and ".." not in rel.parts and rel.as_posix() not in found:
            found.append(rel.as_posix().removeprefix("./"))
    return found


def _onnx_data(folder: Path) -> list[str]:
    """External-data files model.onnx names (read with onnx when installed), else the usual names beside it."""
    try:
        import onnx  # optional extra
        from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors  # optional extra
    except ImportError:
        return [n for n in ONNX_DATA if os.path.lexists(folder / n)]
    try:
        check_regular(folder / "model.onnx")  # a FIFO would block the reader
        proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a readable ONNX file: it goes as it is, alone
        return []
    names = []
    for t in _get_all_tensors(proto):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = ExternalDataInfo(t).location
            if loc and loc not in names:
                names.append(PurePosixPath(loc).as_posix())
    return names


def _inside(folder: Path, rel: str, why: str, label: Optional[str] = None) -> Path:
    """The real regular file ``folder/rel`` leads to, or PushError if it leads out of the folder or is not a file
    (``label``: the folder's name in the message, when ``folder`` is the model's version folder)."""
    shown, label = rel, label or folder.name
    try:
        real = inside(folder, rel)
    except RefusedPath:
        raise PushError(f"{shown} ({why}) leads outside {label}/ (a "
                        "symlink); push sends only files inside the folder: copy the file in to send it.") from None
    try:
        check_regular(real)
    except RefusedPath:
        raise PushError(f"{shown} ({why}) is not a regular file; push sends only files.") from None
    except OSError:
        raise PushError(f"{shown} ({why}) cannot be read.") from None
    return real


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(rel).parts)


def _included(folder: Path, pattern: str, skipped: Optional[list[str]] = None) -> list[str]:
    """Files (relative posix paths) a --include glob matches; a folder matched brings its files, and the symlinks
    in it that do not lead to a regular file inside the folder go to ``skipped`` instead."""
    pure = PurePosixPath(pattern.replace(os.sep, "/"))
    if not pattern.strip() or pure.is_absolute() or ".." in pure.parts:
        raise PushError(f"--include {pattern!r}: give a glob relative to the folder, without '..' (e.g. teacher, "
                        "'samples/*.png').")
    root = Path(os.path.realpath(folder))
    found = []
    for p in sorted(Path(folder).glob(pure.as_posix())):
        walked = p.is_dir() and not p.is_symlink()
        items = [p] if not walked else [q for q in sorted(p.rglob("*")) if q.is_symlink() or not q.is_dir()]
        for q in items:
            rel = q.relative_to(folder).as_posix()
            if _hidden(rel) or rel in found:
                continue
            if walked and q.is_symlink() and not _links_to_a_file_inside(folder, rel):
                if skipped is not None and rel not in skipped:
                    skipped.append(rel)
                continue
            found.append(rel)
    if not found and not skipped:
        raise PushError(f"--include {pattern!r} matches no file in {root.name}/.")
    return found


def _links_to_a_file_inside(folder: Path, rel: str) -> bool:
    try:
        check_regular(inside(folder, rel))
    except OSError:
        return False
    return True


def upload_plan(folder: str | os.PathLike, card: str, include: Iterable[str] = (),
                skipped: Optional[list[str]] = None) -> list[PushFile]:
    """Exactly the files a push of ``folder`` sends with this card (the dry run and the push both use it);
    symlinks skipped inside included folders are added to ``skipped``."""
    folder = Path(folder)
    version = current_version(folder)  # resolved once: files a save switches meanwhile still come from one model
    wanted: dict[str, str] = {}
    for name in ALLOWED:
        if os.path.lexists(folder / name):
            wanted[name] = "folder"
    if "model.onnx" in wanted:
        for name in _onnx_data(folder):
            wanted.setdefault(name, "folder")
    for rel in card_images(card):
        if rel != CARD_NAME and not _hidden(rel) and os.path.lexists(folder / rel):
            wanted.setdefault(rel, "folder")
    for pattern in include:
        for rel in _included(folder, pattern, skipped):
            if rel != CARD_NAME:
                wanted.setdefault(rel, "included")
    files = []
    for rel, source in wanted.items():
        if version is not None and is_our_link(folder, rel):
            if not os.path.lexists(version / rel):  # a link a killed save made ahead of its switch: not this model
                continue
            local = _inside(version, rel, "a model file", label=folder.name)
        else:
            local = _inside(folder, rel, "added by --include" if source == "included" else "a model file")
        files.append(PushFile(rel, local.stat().st_size, source, local))
    files.append(PushFile(CARD_NAME, len(card.encode("utf-8")), "generated"))
    return sorted(files, key=lambda f: f.path)


def _not_sent(folder: Path, files: list[PushFile]) -> list[str]:
    """Notes for the top-level entries that stay home (hidden ones are not named)."""
    sent = {PurePosixPath(f.path).parts[0] for f in files}
    left = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                  if p.name not in sent and not p.name.startswith(".") and p.exists())
    notes = []
    state = [n for n in left if n.rstrip("/") in EXCLUDED]
    if state:
        notes.append(f"not uploaded: {', '.join(state)} (training state)")
    other = [n for n in left if n.rstrip("/") not in EXCLUDED]
    if other:
        notes.append(f"not uploaded: {', '.join(other)} (add with --include)")
    return notes


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise PushError(f"folder {folder} does not exist; give a folder saved by vitprune (or `vitprune compress`).")
    if not (folder / "config.json").is_file():
        raise PushError(f"{folder} has no config.json; push uploads a model folder saved by vitprune.")
    if not (folder / "model.safetensors").is_file():
        raise PushError(f"{folder} has no model.safetensors; the save did not finish, nothing to push.")


# ------------------------------------------------------------------------------------------ errors


def _scrub(text: str, secret: Optional[str]) -> str:
    text = " ".join(str(text).split())
    if secret:
        text = text.replace(secret, "***")
    return text


def _explain(e: BaseException, repo_id: str, endpoint: str, token: Optional[str]) -> str:
    """One line for a failed upload, never containing the token."""
    if isinstance(e, hf_errors.OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set; pushing needs the network (unset HF_HUB_OFFLINE)."
    if isinstance(e, hf_errors.HfHubHTTPError) and getattr(e, "response", None) is not None:
        status = e.response.status_code
        server = _scrub(getattr(e, "server_message", "") or "", token)
        detail = f" ({server})" if server else ""
        if status == 401:
            return f"the Hub refused the token (401){detail}; check HF_TOKEN or run `hf auth login`."
        if status == 403:
            return f"no write access to {repo_id} (403){detail}; use a token with write permission for it."
        if status == 404:
            return f"{repo_id} was not found on the Hub (404){detail}."
        if status >= 500:
            return f"the Hub answered {status} (server error){detail}; nothing was changed locally, try again later."
        return f"the Hub refused the upload ({status}){detail}."
    text = _scrub(str(e), token)
    first = text.split(". ")[0][:300] if text else type(e).__name__
    name = type(e).__name__
    if "connect" in name.lower() or "timeout" in name.lower() or isinstance(e, (ConnectionError, TimeoutError)):
        return f"could not reach the Hub at {endpoint} ({name}: {first}); check the network or HF_ENDPOINT."
    if isinstance(e, ValueError) and "metadata" in text.lower():
        return f"the Hub rejected the model card's metadata: {first}."
    return f"upload to {repo_id} failed ({name}: {first})."


def _network_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [OSError]
    for mod in ("httpx2", "httpx", "requests"):
        try:
            m = __import__(mod)
        except ImportError:
            continue
        for attr in ("HTTPError", "TransportError", "RequestException", "StreamError"):
            t = getattr(m, attr, None)
            if isinstance(t, type) and issubclass(t, BaseException):
                types.append(t)
    return tuple(types)


# ------------------------------------------------------------------------------------------ push


@takes_settings(PushSettings, rest=None)
def push(folder: str | os.PathLike, repo: str, *, token: Optional[str] = None, **settings: Any) -> PushResult:
    """Upload a saved folder to the Hub repo ``repo`` (``user/name``), creating it if needed.

    Sends the files ``upload_plan`` lists (the model's allow-list plus ``include`` globs, see the module doc).
    ``revision`` pushes to that branch (created from main when missing). ``dry_run`` returns the files and the
    card that would go and sends nothing. Failures raise ``PushError`` (one line; the local folder is untouched).
    ``include_onnx``: first export ``model.onnx`` into the folder when it has none (``vitprune.export``, checked
    against PyTorch; the one thing a push writes locally), so that it goes with the model. ``token``: a Hugging
    Face token (default: ``HF_TOKEN``, else the user's ``hf auth login``). The settings (``PushSettings``,
    ``vitprune.settings``), by name:
    """
    s = PushSettings(folder=str(folder), repo=repo, **settings)
    private, revision, dry_run, include = s.private, s.revision, s.dry_run, s.include
    commit_message, include_onnx = s.commit_message, s.include_onnx
    folder = Path(folder).expanduser()
    _check_folder(folder)
    repo_id = check_repo_id(repo)
    if revision is not None and not revision.strip():
        raise PushError("`revision` must be a branch name.")
    onnx_missing = include_onnx and not (folder / ONNX_NAME).is_file()
    if onnx_missing and not dry_run:
        export(str(folder), folder / ONNX_NAME)
    card = render_card(folder, repo_id=repo_id)
    skipped: list[str] = []
    files = upload_plan(folder, card, include, skipped)
    result = PushResult(repo_id=repo_id, revision=revision or "main", private=private, dry_run=dry_run, files=files,
                        card=card, notes=_not_sent(folder, files))
    if skipped:
        result.notes.append(f"not uploaded: {', '.join(sorted(skipped))} (symlinks)")
    if onnx_missing and dry_run:
        result.notes.append(f"--include-onnx: {ONNX_NAME} would be exported into the folder first")
    if dry_run:
        return result

    if constants.HF_HUB_OFFLINE:
        raise PushError("HF_HUB_OFFLINE is set (by you, or by vitprune after the Hub did not answer); pushing needs "
                        "the network: unset HF_HUB_OFFLINE and check the connection.")
    token = token or get_token()
    if not token:
        raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access).")
    api = HfApi(token=token)
    endpoint = api.endpoint
    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()  # the CLI shows its own status line; keeps output to what vitprune prints
    try:
        operations = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=card.encode("utf-8") if f.local is None
                                         else str(f.local)) for f in files]
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.create_commit(repo_id=repo_id, operations=operations, revision=revision, repo_type="model",
                                 commit_message=commit_message or f"Upload {folder.name} with vitprune")
    except PushError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure of the remote part becomes one line

        known = (hf_errors.HfHubHTTPError, hf_errors.OfflineModeIsEnabled, ValueError, RuntimeError,
                 *_network_error_types())
        if not isinstance(e, known):
            raise
        raise PushError(_explain(e, repo_id, endpoint, token)) from None
    finally:
        if not bars_were_off:
            enable_progress_bars()
    result.url = str(url)
    result.commit_url = getattr(info, "commit_url", None)
    return result


__all__ = ["push", "upload_plan", "card_images", "PushResult", "PushFile", "check_repo_id", "ALLOWED", "EXCLUDED"]
