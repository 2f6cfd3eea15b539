"""Populate a Hugging Face Hub cache folder by hand, in the layout huggingface_hub reads offline.

``models--{org}--{name}/refs/main`` holds a commit hash and ``snapshots/{commit}/`` the files. With
``HF_HUB_CACHE`` pointing there and ``HF_HUB_OFFLINE=1``, ``hf_hub_download`` and timm resolve from it.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def populate(cache: Path, repo_id: str, files: dict[str, Path | bytes]) -> Path:
    org, name = repo_id.split("/")
    repo = Path(cache) / f"models--{org}--{name}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for fname, src in files.items():
        if isinstance(src, bytes):
            (snap / fname).write_bytes(src)
        else:
            shutil.copy(src, snap / fname)
    return snap


def populate_from_folder(cache: Path, repo_id: str, folder: Path) -> Path:
    return populate(cache, repo_id, {p.name: p for p in Path(folder).iterdir() if p.is_file()})
