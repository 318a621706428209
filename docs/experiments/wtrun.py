"""Run a script with another checkout's adamk first on sys.path (an experiment's worktree): the editable
install's finder would otherwise import this checkout's (patch-ab.sh, v73-run.sh, v74-run.sh).

    python docs/experiments/wtrun.py TREE SCRIPT [ARGS...]
"""
import runpy
import sys

sys.meta_path[:] = [f for f in sys.meta_path if "scikit" not in repr(f).lower() and "ScikitBuild" not in type(f).__name__]
sys.path.insert(0, sys.argv[1])
sys.argv = [sys.argv[2]] + sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
