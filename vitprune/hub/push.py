"""Upload a saved folder to the Hugging Face Hub: ``create_repo`` + ``upload_folder``, with a regenerated card.

``push(folder, "user/name")`` uploads every file of the folder except hidden ones and ``checkpoints/`` (training
state for ``--resume``, not part of the model); the README.md that goes is the model card regenerated from the
folder's ``config.json`` and ``report.json`` (``vitprune.report.card.render_card``) so that it names the repo it
lives in. The local folder is never written (except ``model.onnx`` exported into it by ``include_onnx``): the
upload reads the files through a temporary staging folder of links, and a failure leaves the folder as it was.

The token comes from ``token=``, else ``HF_TOKEN``, else the user's ``hf auth login``. It is handed to
huggingface_hub and nothing else: it is never printed, logged or put in an error message (messages from the
server are scrubbed of it too).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import PushError

#: files and folders of a saved folder that are not uploaded (top level); hidden names are never uploaded either
EXCLUDED = ("checkpoints",)
CARD_NAME = "README.md"
ONNX_NAME = "model.onnx"


@dataclass
class PushFile:
    path: str  # path in the repo (posix)
    size: int  # bytes (the card: the regenerated card's size)
    source: str  # "folder" or "generated"


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
                "files": [f.__dict__ for f in self.files], "total_bytes": self.total_bytes, "url": self.url,
                "commit_url": self.commit_url, "card": self.card, "notes": self.notes}


# ------------------------------------------------------------------------------------------ checks


def check_repo_id(repo: str) -> str:
    """``user/name`` (an ``hf-hub:`` prefix is accepted); PushError for anything else."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = repo[len("hf-hub:"):] if repo.startswith("hf-hub:") else repo
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushError(f"invalid repo name {repo!r}: write it as user/name (or org/name).")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PushError(f"invalid repo name {repo!r}: use letters, digits, '-', '_' and '.' (no '--' or '..', not "
                        "starting or ending with '-' or '.', at most 96 characters), as user/name.") from None
    return repo_id


def list_files(folder: Path) -> list[Path]:
    """Files of ``folder`` that a push uploads (relative paths, sorted): no hidden names, no ``checkpoints/``."""
    found = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or rel.parts[0] in EXCLUDED or "__pycache__" in rel.parts:
            continue
        if p.is_file():
            found.append(rel)
    return found


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise PushError(f"folder {folder} does not exist; give a folder saved by vitprune (or `vitprune compress`).")
    if not (folder / "config.json").is_file():
        raise PushError(f"{folder} has no config.json; push uploads a model folder saved by vitprune.")
    if not any((folder / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
        raise PushError(f"{folder} has no model.safetensors; the save did not finish, nothing to push.")


# ------------------------------------------------------------------------------------------ errors


def _scrub(text: str, secret: Optional[str]) -> str:
    text = " ".join(str(text).split())
    if secret:
        text = text.replace(secret, "***")
    return text


def _explain(e: BaseException, repo_id: str, endpoint: str, token: Optional[str]) -> str:
    """One line for a failed upload, never containing the token."""
    from huggingface_hub import errors as hf_errors

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


def _stage(folder: Path, files: list[Path], card: str, where: Path) -> None:
    """A folder of links to the files to upload, with the regenerated card (the original folder is not touched)."""
    for rel in files:
        if rel.as_posix() == CARD_NAME:
            continue
        target = where / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        src = (folder / rel).resolve()
        try:
            os.symlink(src, target)
        except OSError:  # no symlinks here (some Windows setups): copy instead
            shutil.copy2(src, target)
    (where / CARD_NAME).write_text(card, encoding="utf-8")


def push(
    folder: str | os.PathLike,
    repo: str,
    *,
    private: bool = False,
    revision: Optional[str] = None,
    dry_run: bool = False,
    token: Optional[str] = None,
    commit_message: Optional[str] = None,
    include_onnx: bool = False,
) -> PushResult:
    """Upload a saved folder to the Hub repo ``repo`` (``user/name``), creating it if needed.

    ``revision`` pushes to that branch (created from main when missing). ``dry_run`` returns the files and the
    card that would go and sends nothing. Failures raise ``PushError`` (one line; the local folder is untouched).
    ``include_onnx``: first export ``model.onnx`` into the folder when it has none (``vitprune.export``, checked
    against PyTorch; the one thing a push writes locally), so that it goes with the model.
    """
    from ..report.card import render_card

    folder = Path(folder).expanduser()
    _check_folder(folder)
    repo_id = check_repo_id(repo)
    if revision is not None and not revision.strip():
        raise PushError("--revision must be a branch name.")
    onnx_missing = include_onnx and not (folder / ONNX_NAME).is_file()
    if onnx_missing and not dry_run:
        from ..exporter import export

        export(str(folder), folder / ONNX_NAME)
    card = render_card(folder, repo_id=repo_id)
    rels = list_files(folder)
    files = [PushFile(rel.as_posix(), (folder / rel).stat().st_size, "folder") for rel in rels
             if rel.as_posix() != CARD_NAME]
    files.append(PushFile(CARD_NAME, len(card.encode("utf-8")), "generated"))
    files.sort(key=lambda f: f.path)
    result = PushResult(repo_id=repo_id, revision=revision or "main", private=private, dry_run=dry_run, files=files,
                        card=card)
    skipped = [p.name for p in folder.iterdir() if p.name in EXCLUDED]
    if skipped:
        result.notes.append(f"not uploaded: {', '.join(skipped)}/ (training state)")
    if onnx_missing and dry_run:
        result.notes.append(f"--include-onnx: {ONNX_NAME} would be exported into the folder first")
    if dry_run:
        return result

    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

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
        with tempfile.TemporaryDirectory(prefix="vitprune-push-") as tmp:
            staging = Path(tmp) / "upload"
            staging.mkdir()
            _stage(folder, rels, card, staging)
            try:
                url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
                if revision is not None and revision != "main":
                    api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
                info = api.upload_folder(
                    repo_id=repo_id, folder_path=staging, revision=revision, repo_type="model",
                    commit_message=commit_message or f"Upload {folder.name} with vitprune",
                )
            except PushError:
                raise
            except Exception as e:  # noqa: BLE001 - every failure of the remote part becomes one line
                from huggingface_hub import errors as hf_errors

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


__all__ = ["push", "PushResult", "PushFile", "check_repo_id", "list_files", "EXCLUDED"]
