"""Compile the 1B preset's layer or whole model for an experiment, optionally forcing ops' tilings
after the DAG search (docs/perf.md v34; not part of the product):

    python docs/experiments/v34-compile.py OUT [what=layer|model] [force=OP:ROWS:PARTS,...] [CONFIG=VALUE ...]

e.g. `force=q_proj:8:1,k_proj:8:1,v_proj:8:1` tiles q/k/v in 8-row tasks, unsplit; CONFIG=VALUE pairs
are CompileConfig fields (gpu defaults to H200). Run it with the checkout whose code is to be measured
on sys.path first.
"""
import sys
import time

import adamk
from adamk.config import CompileConfig
from adamk.models import PRESETS, DecoderLayer, LlamaModel
from adamk.search import dag_search


def _value(text: str):
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(out: str, args: list[str]):
    what, force, config = "layer", {}, {"gpu": "H200"}
    for arg in args:
        key, value = arg.split("=", 1)
        if key == "what":
            what = value
        elif key == "force":
            for item in value.split(","):
                name, rows, parts = item.split(":")
                force[name] = (int(rows), int(parts))
        else:
            config[key] = _value(value)
    search = dag_search.DagSearch.run

    def run(self, module):          # the search as usual, then the forced tilings
        from xdsl.dialects import func
        from adamk.dialects.graph import LinearOp
        result = search(self, module)
        fn = next(o for o in module.ops if isinstance(o, func.FuncOp))
        hit = set()
        for op in fn.body.block.ops:
            if isinstance(op, LinearOp):
                weight = op.weight.owner.weight_name.data
                for name, tiling in force.items():
                    if weight.endswith(name + ".weight"):
                        print(f"force {weight}: {dag_search._tiling_of(op)} -> {tiling}")
                        dag_search._set_tiling(op, tiling)
                        hit.add(name)
        if hit != set(force):
            raise SystemExit(f"no linear named {sorted(set(force) - hit)}")
        return result

    dag_search.DagSearch.run = run
    model = (LlamaModel if what == "model" else DecoderLayer)(PRESETS["llama-3.2-1b"], seed=0)
    start = time.time()
    artifact = adamk.compile(model, CompileConfig(**config))
    artifact.save(out)
    print(f"compiled {out} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
