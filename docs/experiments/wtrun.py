"""Run a script with another checkout's adamk first on sys.path (an experiment's worktree): the editable
install's finder would otherwise import this checkout's (patch-ab.sh, v73-run.sh, v74-run.sh, v76-run.sh).
Processes the script spawns (compile_presets' workers) import the worktree's too: a sitecustomize on
their PYTHONPATH does the same at their start.

    python docs/experiments/wtrun.py TREE SCRIPT [ARGS...]
"""
import os
import runpy
import sys
import tempfile
from pathlib import Path

TREE = os.path.abspath(sys.argv[1])
HOOK = f"""import sys
sys.meta_path[:] = [f for f in sys.meta_path if "scikit" not in repr(f).lower() and "ScikitBuild" not in type(f).__name__]
sys.path.insert(0, {TREE!r})
"""
exec(HOOK)
hook_dir = tempfile.mkdtemp(prefix="wtrun-")
Path(hook_dir, "sitecustomize.py").write_text(HOOK)
os.environ["PYTHONPATH"] = os.pathsep.join([hook_dir] + [p for p in [os.environ.get("PYTHONPATH")] if p])
sys.argv = [sys.argv[2]] + sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
