"""The artifact directory: what `adamk compile` writes and CI pipelines keep (DESIGN.md).

Files are kept in memory until `save`, which writes them into a fresh temporary
directory next to the destination and renames it into place, so a failed or
interrupted save never leaves a half-written artifact. `manifest.json` records the
sha256 of every other file; `verify` checks them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import AdamkError

MANIFEST = "manifest.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Artifact:
    def __init__(self, files: dict[str, bytes], manifest: dict):
        self.files = dict(files)
        self.manifest = dict(manifest)
        self.manifest["files"] = {name: sha256(data) for name, data in sorted(self.files.items())}

    def manifest_bytes(self) -> bytes:
        return (json.dumps(self.manifest, indent=2, sort_keys=True) + "\n").encode()

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        dest = Path(path)
        check_output_dir(dest, force)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            for name, data in self.files.items():
                (tmp / name).write_bytes(data)
            (tmp / MANIFEST).write_bytes(self.manifest_bytes())
            os.chmod(tmp, 0o755)
            if dest.exists():
                old = dest.with_name(f".{dest.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                dest.rename(old)
                tmp.rename(dest)
                shutil.rmtree(old)
            else:
                tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest


def check_output_dir(dest: Path, force: bool):
    """Refuse to replace anything but an empty directory unless forced."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not force:
        raise AdamkError(f"output directory {dest} exists and is not empty (use --force to replace it)")


def read_manifest(path: str | os.PathLike) -> dict:
    p = Path(path) / MANIFEST
    if not p.is_file():
        raise AdamkError(f"{path} is not an adamk artifact (no {MANIFEST})")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise AdamkError(f"{p} is not valid JSON: {e}") from e


def verify(path: str | os.PathLike) -> dict[str, str]:
    """sha256 check of every file the manifest lists: {file: "ok" | "missing" | "modified"}."""
    manifest = read_manifest(path)
    status = {}
    for name, digest in manifest["files"].items():
        f = Path(path) / name
        status[name] = "missing" if not f.is_file() else "ok" if sha256(f.read_bytes()) == digest else "modified"
    return status


def load_files(path: str | os.PathLike) -> tuple[dict, dict[str, bytes]]:
    """The manifest and every listed file, refusing a tampered or incomplete artifact."""
    bad = {n: s for n, s in verify(path).items() if s != "ok"}
    if bad:
        raise AdamkError(f"artifact {path} fails its sha256 check: " + ", ".join(f"{n} {s}" for n, s in bad.items()))
    manifest = read_manifest(path)
    return manifest, {name: (Path(path) / name).read_bytes() for name in manifest["files"]}
