"""Compile the 1B preset's layer or whole model for an experiment, optionally forcing ops' tilings
after the DAG search (docs/perf.md v34; not part of the product):

    python docs/experiments/v34-compile.py OUT [what=layer|model] [force=OP:ROWS:PARTS,...] [alone=attention]
        [merge=combine|staging] [seq=MAX_SEQ_LEN] [refill=N|off] [CONFIG=VALUE ...]

e.g. `force=q_proj:8:1,k_proj:8:1,v_proj:8:1` tiles q/k/v in 8-row tasks, unsplit; CONFIG=VALUE pairs
are CompileConfig fields (gpu defaults to H200). Run it with the checkout whose code is to be measured
on sys.path first.

`merge=combine` (docs/perf.md v61; v34's `v34-combine-tasks.patch` as an option): a split attention's
parts are merged by its combine tasks (one per sequence and KV group), never by the reading linear's
staging, so o_proj stages the merged words (and the search prices no merge weights). Since v62 main
does so for batches above `tile.STAGED_MERGE_MAX_BATCH`; the option makes every batch do it, and
`merge=staging` makes every batch merge in the reading linear's staging (main before v62).

`alone=attention` (docs/perf.md v59): after the placement, every SM that runs an attention task gives
each of its q/k/v tasks to an SM without one (the one with the fewest q/k/v tasks) in exchange for a
gated gate/up task of the same bytes, so no SM's stream holds q/k/v pages ahead of its attention's
cached rows; each SM's program is then in task order (topological: the task IR is op by op).
"""
import dataclasses
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
    what, force, alone, merge, seq, refill, config = "layer", {}, None, None, None, None, {"gpu": "H200"}
    for arg in args:
        key, value = arg.split("=", 1)
        if key == "what":
            what = value
        elif key == "alone":
            if value != "attention":
                raise SystemExit(f"alone={value}: only alone=attention")
            alone = value
        elif key == "seq":
            seq = int(value)
        elif key == "refill":
            refill = value
        elif key == "merge":
            if value not in ("combine", "staging"):
                raise SystemExit(f"merge={value}: only merge=combine or merge=staging")
            merge = value
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
    if merge:
        merge_parts(merge == "staging")
    if refill is not None:
        one_at_a_time_refill(refill)
    if alone:
        emit = dag_search.emit_schedule
        dag_search.emit_schedule = lambda op, programs, *a: emit(op, attention_alone(op, programs), *a)
    preset = PRESETS["llama-3.2-1b"]
    if seq:     # the KV cache's positions (the preset's 4096 otherwise)
        preset = dataclasses.replace(preset, max_seq_len=seq)
    model = (LlamaModel if what == "model" else DecoderLayer)(preset, seed=0)
    start = time.time()
    artifact = adamk.compile(model, CompileConfig(**config))
    artifact.save(out)
    print(f"compiled {out} in {time.time() - start:.1f} s")


def one_at_a_time_refill(refill: str):
    """refill=N: each SM streams its chain's pages and N more one at a time (main: a ring's worth,
    codegen/cuda.py one_at_a_time, measured in v22 on v21's kernel); refill=off: none one at a time."""
    from adamk.codegen import cuda
    lone = cuda.one_at_a_time
    if refill == "off":
        cuda.one_at_a_time = lambda sms, pages, depth: [0] * len(sms)
    else:
        cuda.one_at_a_time = lambda sms, pages, depth: lone(sms, pages, int(refill))


def merge_parts(staging: bool):
    """merge=combine: no linear merges a split attention's parts in its staging, whatever the batch
    (main: batches of at most tile.STAGED_MERGE_MAX_BATCH do); the combine tasks merge them first.
    merge=staging: a plain input read by its linear alone merges them at every batch (main before v62)."""
    from adamk.config import MAX_BATCH
    from adamk.passes import tile
    tile.STAGED_MERGE_MAX_BATCH = MAX_BATCH if staging else 0


def attention_alone(module, programs: list[list[int]]) -> list[list[int]]:
    """`programs` with no q/k/v task on an SM that runs an attention task (see the docstring)."""
    from adamk.dialects.task import TaskOp
    from adamk.search.cost import TaskCost
    tasks = [o for o in module.ops if isinstance(o, TaskOp)]
    chain = lambda i: tasks[i].source_name.endswith(("q_proj", "k_proj", "v_proj"))        # noqa: E731
    gate = lambda i: tasks[i].source_name.endswith("gate_proj")                            # noqa: E731
    weight_bytes = lambda i: TaskCost.of_exec(tasks[i], 512).stage_bytes                    # noqa: E731
    attention = {sm for sm, p in enumerate(programs) if any(tasks[i].kind_name == "attention" for i in p)}
    moved = 0
    for sm in sorted(attention):
        for i in [i for i in programs[sm] if chain(i)]:
            donors = [d for d in range(len(programs)) if d not in attention and any(gate(g) for g in programs[d])]
            donor = min(donors, key=lambda d: (sum(chain(j) for j in programs[d]), d))
            g = next(g for g in programs[donor] if gate(g) and weight_bytes(g) == weight_bytes(i))
            programs[sm].remove(i)
            programs[donor].remove(g)
            programs[sm].append(g)
            programs[donor].append(i)
            moved += 1
    print(f"alone=attention: {moved} q/k/v tasks moved off {len(attention)} attention SMs")
    return [sorted(p) for p in programs]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
