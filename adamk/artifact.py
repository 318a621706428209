"""The artifact directory: what `adamk compile` writes and CI pipelines keep (DESIGN.md).

Files are kept in memory until `save`, which writes them into a fresh temporary
directory next to the destination and swaps it into place, so a failed or interrupted
save leaves either the old artifact or the new one, never a half-written one, and never
touches anything that is not an adamk artifact (`check_output_dir`, also run before a
compile starts). `manifest.json` records the sha256 of every other file; `verify` checks
them, and treats the manifest as untrusted input: it names only plain files of the
artifact directory, and files it does not list are reported.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from .config import MAX_BATCH
from .errors import AdamkError
from .names import quoted

MANIFEST = "manifest.json"
# The manifest's format: what its fields mean to the runtime. 2: linear weights are stored on the
# device page by page (`packed_weights`); a runtime binding them row-major would compute garbage, so
# a runtime reads only its own format.
MANIFEST_FORMAT = 5   # 3: layer-indexed buffers and weights (a whole model); 4: kernel.max_epoch;
                      # 5: dtype bf16x2_tagged (a batch's bf16 shadows, passes/tile.py)
MAX_MANIFEST_BYTES = 16 << 20     # a manifest is a few KB; anything far larger is not one


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Artifact:
    def __init__(self, files: dict[str, bytes], manifest: dict, search_seconds: float = 0.0):
        self.files = dict(files)
        self.manifest = dict(manifest)
        self.manifest["files"] = {name: sha256(data) for name, data in sorted(self.files.items())}
        self.search_seconds = search_seconds      # wall clock: kept out of the (deterministic) manifest

    def manifest_bytes(self) -> bytes:
        return (json.dumps(self.manifest, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        dest = check_output_dir(Path(path), force)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        except OSError as e:
            raise AdamkError(f"cannot write the artifact {dest}: {e.strerror}") from None
        try:
            with _signals_raise():           # SIGTERM / SIGHUP: clean up below, then exit
                for name, data in self.files.items():
                    (tmp / name).write_bytes(data)
                (tmp / MANIFEST).write_bytes(self.manifest_bytes())
                os.chmod(tmp, 0o755)
                if dest.exists():
                    _exchange(tmp, dest)     # atomic: dest is the old artifact, then the new one
                else:
                    tmp.rename(dest)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise AdamkError(f"cannot write the artifact {dest}: {e.strerror or e}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)   # after an exchange: the old artifact
        return dest


def check_output_dir(dest: Path, force: bool) -> Path:
    """The directory an artifact may be written to (symlinks resolved), or a clear error.

    Writes only to a new path, an empty directory, or (with `force`) a directory that holds
    an adamk artifact and nothing else; never over a file, a directory of the user's, or the
    current directory; checked before the compile, so a bad path costs no compile time."""
    dest = Path(os.path.abspath(dest))
    if dest.is_symlink():
        dest = dest.resolve()
    if dest.exists():
        if not dest.is_dir():
            raise AdamkError(f"output {dest} exists and is not a directory")
        entries = sorted(p.name for p in dest.iterdir())
        if entries:
            if not force:
                raise AdamkError(f"output directory {dest} exists and is not empty (use --force to replace an "
                                 "adamk artifact)")
            listed = _listed_files(dest)
            if listed is None:
                raise AdamkError(f"output directory {dest} is not an adamk artifact (no valid {MANIFEST}); "
                                 "refusing to replace it, even with --force")
            extra = [e for e in entries if e != MANIFEST and e not in listed]
            if extra:
                raise AdamkError(f"output directory {dest} holds {quoted(extra[0])}, which is not part of its adamk "
                                 "artifact; refusing to replace it, even with --force")
        if Path.cwd().resolve().is_relative_to(dest.resolve()):
            raise AdamkError(f"output directory {dest} is the current directory or holds it; write elsewhere")
    _check_writable(dest)
    return dest


# The name of one pass's IR in a --dump-ir directory (compiler.lower writes them), and the marker file
# that says a directory holds adamk's dumps (so a later compile may replace them, and only then).
DUMP_NAME = re.compile(r"[0-9]{2}-[A-Za-z0-9_.-]+\.mlir")
DUMP_MARKER = ".adamk-ir-dump"


def dump_name(index: int, name: str) -> str:
    return f"{index:02d}-{name}.mlir"


def check_dump_dir(path, output=None) -> Path:
    """A directory for --dump-ir: new, empty, or one an earlier compile dumped into (its marker and
    dumps alone); not the artifact directory `output`, inside it, or holding it."""
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        raise AdamkError(f"--dump-ir {path} exists and is not a directory")
    if output is not None:
        output = Path(os.path.abspath(output)).resolve()
        if path.resolve().is_relative_to(output) or output.is_relative_to(path.resolve()):
            raise AdamkError(f"--dump-ir {path} and the output directory {output} are one or hold each other; "
                             "give them separate directories")
    if path.is_dir():
        entries = sorted(os.listdir(path))
        ours = DUMP_MARKER in entries
        other = [e for e in entries if not (ours and (e == DUMP_MARKER or DUMP_NAME.fullmatch(e)))]
        if other:
            raise AdamkError(f"--dump-ir {path} holds {quoted(other[0])}, which is not an IR dump of adamk; give a "
                             "new or empty directory")
    _check_writable(path)
    return path


def prepare_dump_dir(path) -> Path:
    """`check_dump_dir`, then an earlier compile's dumps removed and the marker written: what the
    directory holds afterwards is this compile's alone."""
    path = check_dump_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    for entry in os.listdir(path):
        if DUMP_NAME.fullmatch(entry):
            os.remove(path / entry)
    (path / DUMP_MARKER).write_text("IR dumps of an adamk compile (adamk compile --dump-ir); replaced by the next\n")
    return path


def check_output_file(path: Path) -> Path:
    """A file a command will write when it ends (a cost profile): checked before its long run."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise AdamkError(f"output {path} is a directory")
    _check_writable(path)
    return path


def _check_writable(dest: Path):
    """The nearest existing ancestor of `dest` must be a directory we can create entries in
    (probed by making and removing a temporary directory: /proc or a read-only mount fail)."""
    parent = dest.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise AdamkError(f"cannot create {dest}: {parent} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".adamk-probe.", dir=parent))
    except OSError as e:
        raise AdamkError(f"cannot create {dest}: {parent} is not writable ({e.strerror})") from None


def _listed_files(path: Path) -> set[str] | None:
    """The file names an artifact's manifest lists, or None if `path` holds no adamk manifest. Any
    format counts (an artifact of an older adamk is replaced like a current one), so only the
    manifest's format number and its list of plain file names are read."""
    try:
        manifest = _manifest_json(path)
    except AdamkError:
        return None
    if not (isinstance(manifest, dict) and isinstance(manifest.get("format", 1), int)
            and isinstance(manifest.get("adamk_version"), str) and isinstance(manifest.get("files"), dict)
            and all(isinstance(n, str) and _plain_name(n) for n in manifest["files"])):
        return None
    return set(manifest["files"])


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path):
    """Swap two directories atomically (Linux renameat2), so `b` always holds one of them."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd = -100
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):      # those two: no exchange on this filesystem
            raise OSError(err, os.strerror(err))
    _swap_by_renames(a, b)


def _swap_by_renames(a: Path, b: Path):
    """No atomic exchange here (another OS, or a filesystem without it): two renames, the first
    undone if the second fails (a signal that _signals_raise turns into an exception included)."""
    old = b.with_name(f".{b.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    b.rename(old)
    try:
        a.rename(b)
    except BaseException:
        old.rename(b)
        raise
    old.rename(a)


@contextlib.contextmanager
def _signals_raise():
    """SIGTERM and SIGHUP raise SystemExit inside the block (so its cleanup runs) instead of
    ending the process where it stands; a no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    saved = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


# What `adamk inspect` and the runtime read from a manifest, with the JSON types they need.
_SCHEMA = {
    "format": int, "adamk_version": str, "files": dict, "tasks": list, "counters": list, "buffers": list,
    "weights": list, "packed_weights": list,
    "smem_peak_bytes": int, "smem_peak_bytes_without_ksplit": int, "weight_bytes": int, "weight_read_bytes": int,
    "weight_read_floor_us": (int, float), "predicted_step_us": (int, float), "predicted_at_pos": int,
    "cost_model": str, "config": dict,
    "model": {"hidden_size": int, "num_heads": int, "num_kv_heads": int, "head_dim": int,
              "intermediate_size": int, "max_seq_len": int, "layers": int},
    "target": {"gpu": str, "arch": str, "num_sms": int, "smem_per_block": int, "dram_gbps": (int, float)},
    "kernel": {"name": str, "grid": int, "block_threads": int, "smem_bytes": int, "stages": int,
               "pages_in_flight": int, "registers": int, "spill_bytes": int, "trace_slots": list,
               "max_epoch": int},
}


# Fields a manifest may leave out (older artifacts, a layer's model), with their types where present;
# a whole model's manifest must have the ones in _WHOLE_MODEL.
_OPTIONAL = {"config": {"batch_size": int, "schedule": str},
             "model": {"whole_model": bool, "vocab_size": int, "logits_buffer": str}}
_WHOLE_MODEL = {"model": {"vocab_size": int, "logits_buffer": str}}


def _check_schema(value, schema, where: str, optional: bool = False):
    for key, kind in schema.items():
        if isinstance(value, dict) and key not in value and optional:
            continue
        if not isinstance(value, dict) or key not in value:
            raise AdamkError(f"{where} has no field '{key}'")
        field = value[key]
        if isinstance(kind, dict):
            _check_schema(field, kind, f"{where} field '{key}'", optional)
            continue
        if not isinstance(field, kind) or (isinstance(field, bool) and kind is not bool):   # JSON true is no int
            raise AdamkError(f"{where} field '{key}' is not of type "
                             f"{'/'.join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__}")


def _not_json(constant: str):
    """NaN and Infinity, which Python's json reads and JSON (and the C++ runtime) does not."""
    raise ValueError(f"{constant} is not a JSON number")


def _exact_int(text: str) -> int:
    """An integer the C++ runtime reads exactly too (JSON numbers are doubles there)."""
    value = int(text)
    if abs(value) > 2**53:
        raise ValueError("an integer past 2^53")
    return value


def _manifest_json(path: str | os.PathLike):
    """The parsed manifest.json of the artifact directory `path`, whatever its format and fields."""
    p = Path(path) / MANIFEST
    if p.is_symlink() or not p.is_file():
        raise AdamkError(f"{path} is not an adamk artifact (no {MANIFEST})")
    if p.stat().st_size > MAX_MANIFEST_BYTES:
        raise AdamkError(f"{p} is {p.stat().st_size} bytes, not an adamk manifest")
    try:
        return json.loads(p.read_bytes(), parse_constant=_not_json, parse_int=_exact_int)
    except (ValueError, RecursionError) as e:
        reason = e if isinstance(e, ValueError) else "nested too deeply"
        raise AdamkError(f"{p} is not valid JSON: {reason}") from None


def read_manifest(path: str | os.PathLike) -> dict:
    p = Path(path) / MANIFEST
    manifest = _manifest_json(path)
    fmt = manifest.get("format", 1) if isinstance(manifest, dict) else None
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt != MANIFEST_FORMAT:
        raise AdamkError(f"{p} is manifest format {fmt}, made by {'a newer' if fmt > MANIFEST_FORMAT else 'an older'} "
                         f"adamk; this one reads format {MANIFEST_FORMAT}: recompile the model")
    _check_schema(manifest, _SCHEMA, str(p))
    _check_schema(manifest, _OPTIONAL, str(p), optional=True)
    if manifest["model"].get("whole_model"):
        _check_schema(manifest, _WHOLE_MODEL, str(p))
    if not 1 <= manifest["config"].get("batch_size", 1) <= MAX_BATCH:
        raise AdamkError(f"{p} field 'config' field 'batch_size' is outside 1..{MAX_BATCH}")
    for name, digest in manifest["files"].items():
        if not _plain_name(name):
            raise AdamkError(f"{p} lists {quoted(name)}, which is not a plain file name in the artifact directory")
        if not isinstance(digest, str):
            raise AdamkError(f"{p} gives no sha256 for {quoted(name)}")
    return manifest


def _plain_name(name: str) -> bool:
    return (name not in ("", ".", "..", MANIFEST) and os.path.basename(name) == name and "\\" not in name
            and "\0" not in name)


def verify(path: str | os.PathLike) -> dict[str, str]:
    """sha256 check of every file the manifest lists, and of what else the directory holds:
    {file: "ok" | "missing" | "modified" | "not a file" | "unexpected"}."""
    manifest = read_manifest(path)
    status = {}
    for name, digest in manifest["files"].items():
        f = Path(path) / name
        if f.is_symlink() or (f.exists() and not f.is_file()):
            status[name] = "not a file"
        else:
            status[name] = "missing" if not f.exists() else "ok" if sha256(f.read_bytes()) == digest else "modified"
    for f in sorted(Path(path).iterdir()):
        if f.name != MANIFEST and f.name not in status:
            status[f.name] = "unexpected"
    return status


def load_files(path: str | os.PathLike) -> tuple[dict, dict[str, bytes]]:
    """The manifest and every listed file, refusing a tampered or incomplete artifact."""
    bad = {n: s for n, s in verify(path).items() if s != "ok"}
    if bad:
        raise AdamkError(f"artifact {path} fails its sha256 check: " + ", ".join(f"{quoted(n)} {s}"
                                                                               for n, s in bad.items()))
    manifest = read_manifest(path)
    return manifest, {name: (Path(path) / name).read_bytes() for name in manifest["files"]}
