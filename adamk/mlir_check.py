"""Verify an artifact's IR in upstream MLIR: each level (graph, tasks, schedule) goes through an
MLIR opt driver with the artifact's own dialect description loaded (`--irdl-file`), so upstream
MLIR's parser and verifier check every adamk op's operands, results and attributes.

The driver is `iree-opt` from the `iree-base-compiler` wheel (`pip install adamk[mlir]`), or
any `mlir-opt` on PATH (ADAMK_MLIR_OPT names another). Reads the artifact's `adamk.irdl.mlir`,
never the installed one: the check is of what the artifact says.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .dialects.irdl import FILE_NAME
from .errors import AdamkError
from .names import quoted

LEVELS = ("graph.mlir", "tasks.mlir", "schedule.mlir")
TIMEOUT_S = 300


def find_opt() -> str | None:
    """The MLIR opt driver to use, or None where none is installed."""
    named = os.environ.get("ADAMK_MLIR_OPT")
    if named:
        found = named if os.path.isfile(named) and os.access(named, os.X_OK) else shutil.which(named)
        if found is None:
            raise AdamkError(f"ADAMK_MLIR_OPT names {quoted(named)}, which is not an executable file")
        return found
    try:
        from iree.compiler.tools.binaries import find_tool
        return find_tool("iree-opt")
    except (ImportError, OSError, ValueError):
        return shutil.which("mlir-opt") or shutil.which("iree-opt")


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """The driver run once; a driver that cannot be started is one clear error."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except OSError as e:
        raise AdamkError(f"cannot run the MLIR opt driver {quoted(argv[0])}: {e.strerror}") from None


def opt_version(opt: str) -> str:
    """The driver's LLVM version, and the wheel's where it came from one."""
    out = _run([opt, "--version"], 60).stdout
    llvm = next((line.strip() for line in out.splitlines() if "version" in line.lower()), "unknown version")
    try:
        return f"iree-base-compiler {version('iree-base-compiler')}, {llvm}"
    except PackageNotFoundError:     # a driver from PATH
        return llvm


def verify_text(opt: str, irdl_file: str | os.PathLike, mlir_file: str | os.PathLike) -> str | None:
    """None where upstream MLIR parses and verifies `mlir_file`, else its first diagnostic."""
    try:
        run = _run([opt, f"--irdl-file={irdl_file}", str(mlir_file), "-o", os.devnull], TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"{Path(opt).name} ran past {TIMEOUT_S} s"
    if run.returncode == 0:
        return None
    lines = [line for line in run.stderr.splitlines() if "error" in line] or run.stderr.splitlines() or [
        f"exit status {run.returncode}"]
    return lines[0].strip()


def check_artifact(path: str | os.PathLike, opt: str | None = None) -> dict[str, str | None]:
    """level file -> None (verified) or the first diagnostic, for an artifact directory, with the
    driver `opt` (default: `find_opt()`)."""
    opt = opt or find_opt()
    if opt is None:
        raise AdamkError("no MLIR opt driver: install the extra with `pip install adamk[mlir]` (iree-base-compiler's "
                         "iree-opt), or put mlir-opt on PATH")
    path = Path(path)
    irdl_file = path / FILE_NAME
    if not irdl_file.is_file():
        raise AdamkError(f"{path} has no {FILE_NAME} (compiled by an adamk before the dialect description shipped)")
    return {level: verify_text(opt, irdl_file, path / level) for level in LEVELS}
