"""The `adamk` command line: compile, inspect, run, bench, calibrate, gpus, dialect.

User mistakes (bad paths, unsupported models, unknown GPUs, ...) end with one line on
stderr and exit status 1; nothing half-written is left behind.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from .config import SEARCH_BUDGET_S
from .errors import AdamkError
from .names import printable, quoted

err_console = Console(stderr=True, highlight=False, emoji=False)


def _say(*parts):
    """One line on stderr: `parts` are plain strings or (string, style); no rich markup is read
    from them (paths and model names are data) and unprintable characters are escaped."""
    err_console.print(Text.assemble(*((printable(p), "") if isinstance(p, str) else (printable(p[0]), p[1])
                                      for p in parts)), soft_wrap=True)


def _fail(message: str):
    _say(("error:", "bold red"), " ", message)
    sys.exit(1)


_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())    # click 8.1 prints the help itself


class _Cli(click.Group):
    def main(self, *args, **kwargs):
        """click's usage errors as one line too (exit status 2), not a usage block."""
        try:
            code = super().main(*args, **{**kwargs, "standalone_mode": False})
        except _NO_ARGS as e:                      # a bare `adamk` (click 8.2+): its help, as --help gives it
            click.echo(e.ctx.get_help())
            sys.exit(0)
        except click.ClickException as e:
            _say(("error:", "bold red"), " ", e.format_message().splitlines()[0])
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            _say(("error:", "bold red"), " ", "aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                try:
                    return super().invoke(ctx)
                finally:                                    # one line each, as errors are
                    for w in caught:
                        if issubclass(w.category, UserWarning):
                            _say(("warning:", "yellow"), " ", str(w.message).splitlines()[0])
        except (AdamkError, NotImplementedError) as e:
            _fail(str(e).splitlines()[0] if str(e).strip() else type(e).__name__)


@click.group(cls=_Cli)
@click.version_option(package_name="adamk")
def main():
    """adamk: compile an LLM decode step into one persistent CUDA kernel."""


@contextlib.contextmanager
def _progress(name: str):
    """Show a spinner while a step runs, then its time; steps over a second get a line either way."""
    start = time.perf_counter()
    with err_console.status(Text(f"{name} ...")) as status:
        yield lambda detail: status.update(Text(f"{name} ... {detail}"))
    seconds = time.perf_counter() - start
    _say(("done", "green"), f" {name} ", (f"({seconds:.1f} s)", "dim"))


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--gpu", default="L20", show_default=True, help="Target GPU (see `adamk gpus`).")
@click.option("--batch-size", default=1, show_default=True, type=int)
@click.option("--max-seq-len", default=None, type=int, help="KV cache length (default: the model's).")
@click.option("--tile-rows", default=16, show_default=True, type=int, help="Output rows per linear task.")
@click.option("--stages", default=None, type=int,
              help="Weight pages in each SM's ring (default: the GPU's, see `adamk gpus`, fewer "
                   "where a large batch's whole-row linears would not fit beside them: docs/smem.md).")
@click.option("--pages-in-flight", default=None, type=int,
              help="Pages of the ring being copied at once (default: the GPU's, and its batch's for "
                   "--batch-size > 1: see `adamk gpus`).")
@click.option("--stage-bytes", default=32 * 1024, show_default=True, type=int,
              help="Bytes of one weight page of the SM's ring (docs/smem.md).")
@click.option("--no-ksplit", is_flag=True, help="Do not split reductions (linears over K, attention over the sequence).")
@click.option("--attention-parts", type=click.Choice(["1", "2", "4", "8", "16"]), default=None,
              help="Sequence parts of every attention (flash-decoding split; default: the search's choice).")
@click.option("--no-gate-up", is_flag=True,
              help="Keep a SwiGLU's gate and up as two linears (down stages silu(gate) * up) instead of one gated "
                   "linear.")
@click.option("--schedule", type=click.Choice(["search", "round-robin", "barrier", "queue"]), default="search",
              show_default=True, help="The DAG search, or a baseline for comparison.")
@click.option("--search-budget", default=SEARCH_BUDGET_S, show_default=True, type=float,
              help="Seconds the search may take.")
@click.option("--cost-model", type=click.Path(dir_okay=False), default=None,
              help="A GPU profile from `adamk calibrate` (default: the one shipped for the GPU, else the "
                   "spec table).")
@click.option("-o", "--output", default="out", show_default=True, type=click.Path(path_type=Path),
              help="Artifact directory to write.")
@click.option("--force", is_flag=True, help="Replace the adamk artifact an output directory holds (never other files).")
@click.option("--dump-ir", type=click.Path(path_type=Path), default=None,
              help="Also write the IR after every pass into this directory (new, empty, or one an earlier compile "
                   "dumped into, whose dumps are replaced; not the output directory, inside it or holding it).")
def compile(model, gpu, batch_size, max_seq_len, tile_rows, stages, pages_in_flight, stage_bytes, no_ksplit,
            attention_parts, no_gate_up, schedule, search_budget, cost_model, output, force, dump_ir):
    """Compile MODEL (an ONNX decoder layer or whole model) into an artifact directory."""
    from . import compiler
    from .artifact import check_dump_dir, check_output_dir
    from .config import CompileConfig
    config = CompileConfig(gpu=gpu, batch_size=batch_size, max_seq_len=max_seq_len, tile_rows=tile_rows,
                           stages=stages, pages_in_flight=pages_in_flight, stage_bytes=stage_bytes,
                           ksplit=not no_ksplit, attention_parts=int(attention_parts) if attention_parts else None,
                           gate_up=not no_gate_up, schedule=schedule,
                           search_budget_s=search_budget, cost_model=cost_model)
    check_output_dir(output, force)          # before a long compile, not after it
    if dump_ir is not None:
        check_dump_dir(dump_ir, output)
    artifact = compiler.compile(str(model), config, dump_dir=dump_ir, progress=_progress)
    artifact.save(output, force=force)
    m = artifact.manifest
    _say(f"wrote {output}/ for {m['target']['gpu']} ({m['target']['arch']}): {len(m['tasks'])} tasks on "
         f"{m['kernel']['grid']} SMs, {m['smem_peak_bytes']} B shared memory per block "
         f"({m['smem_peak_bytes_without_ksplit']} B without K-splitting)"
         + (f"; searched for {artifact.search_seconds:.1f} s" if config.schedule == "search" else ""))


def _need_gpu(what: str):
    """A command that runs the kernel: one clear line on a machine without a CUDA GPU."""
    import torch
    if not torch.cuda.is_available():
        raise AdamkError(f"adamk {what} runs the megakernel and needs a CUDA GPU; this machine has none "
                         "(torch.cuda.is_available() is False)")


def _whole_model(artifact: Path, weights: Path, what: str, layers: str = "adamk.load runs layers"):
    """What can be checked of a command's artifact and weights without a GPU, checked first."""
    from .artifact import read_manifest
    if not read_manifest(artifact)["model"].get("whole_model"):
        raise AdamkError(f"adamk {what} needs a whole model; {artifact} is one decoder layer ({layers})")
    if not weights.exists():
        raise AdamkError(f"--weights {weights}: no such file or directory")


def _ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise AdamkError(f"--prompt-ids {quoted(text)} is not a comma-separated list of token ids") from None
    if not ids:
        raise AdamkError("--prompt-ids names no token")
    return ids


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--weights", required=True, type=click.Path(path_type=Path),
              help="The model's weights: a safetensors file, a (sharded) checkpoint directory or the ONNX file.")
@click.option("--prompt-ids", required=True, multiple=True,
              help="The prompt's token ids, comma-separated; once per sequence for an artifact of a batch.")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--weights-prefix", default="", help="Bind only the weights under this name prefix ...")
@click.option("--names-prefix", default="", help="... renamed to this prefix (the artifact's names).")
def run(artifact, weights, prompt_ids, max_new_tokens, weights_prefix, names_prefix):
    """Generate greedily from a whole-model ARTIFACT: the prompt prefilled in PyTorch, each new token
    from the megakernel, printed as it comes; then tokens/s. An artifact of a batch of B takes B
    prompts (--prompt-ids once each), decoded together: each step prints its B ids, joined by '/'."""
    prompts = [_ids(p) for p in prompt_ids]
    _whole_model(artifact, weights, "run")
    _need_gpu("run")
    from .runtime.engine import Engine
    engine = Engine(artifact, str(weights), weights_prefix=weights_prefix, names_prefix=names_prefix)
    batch = engine.step.batch
    if len(prompts) != batch:
        raise AdamkError(f"{len(prompts)} --prompt-ids for an artifact that decodes a batch of {batch}")
    out = click.get_text_stream("stdout")
    shown = (lambda t: str(t)) if batch == 1 else (lambda ts: "/".join(map(str, ts)))     # noqa: E731
    result = engine.generate(prompts[0] if batch == 1 else prompts, max_new_tokens,
                             on_token=lambda t: (out.write(f"{shown(t)} "), out.flush()))
    out.write("\n")
    _say(f"{max_new_tokens * batch} tokens: {result.tokens_per_s:.1f} tokens/s on the megakernel (steps waited "
         f"for one by one to stream them); prefill of {sum(len(p) - 1 for p in prompts)} tokens "
         f"{result.prefill_s * 1e3:.1f} ms")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--weights", required=True, type=click.Path(path_type=Path),
              help="The model's weights: a safetensors file, a (sharded) checkpoint directory or the ONNX file.")
@click.option("--pos", default=512, show_default=True, type=click.IntRange(min=0), help="The first step's position.")
@click.option("--steps", default=100, show_default=True, type=click.IntRange(min=10))
@click.option("--weights-prefix", default="", help="Bind only the weights under this name prefix ...")
@click.option("--names-prefix", default="", help="... renamed to this prefix (the artifact's names).")
def bench(artifact, weights, pos, steps, weights_prefix, names_prefix):
    """Median time of a whole-model ARTIFACT's decode step (steps back to back from --pos, random KV
    history) against the weight-read floor."""
    _whole_model(artifact, weights, "bench", "benchmarks/bench_layer.py times layers")
    _need_gpu("bench")
    from . import load
    step = load(artifact, str(weights), weights_prefix=weights_prefix, names_prefix=names_prefix)
    from .runtime.timing import copy_bandwidth, launch_count, time_launches
    runs = launch_count(steps)
    last = pos + runs
    if last > step.max_seq_len:
        raise AdamkError(f"--pos {pos} and --steps {steps} pass the artifact's max_seq_len {step.max_seq_len} "
                         f"({runs} steps are run)")
    step.k_cache.normal_()
    step.v_cache.normal_()
    positions = pos if step.batch == 1 else [pos] * step.batch        # every sequence of a batch at --pos
    read = step.read_bytes(positions)
    bw = copy_bandwidth()
    step.start(0 if step.batch == 1 else [0] * step.batch, positions)
    single, b2b = time_launches(step.launch, steps)
    step.check()
    floor = read / bw * 1e6
    _say(f"step {b2b:.1f} us back to back ({single:.1f} us alone), positions {pos}..{last - 1}; "
         f"floor {floor:.1f} us ({read / 1e9:.2f} GB at {bw / 1e12:.2f} TB/s copy): {floor / b2b:.0%} of it")


def uncalibrated(m: dict) -> str:
    """Why a manifest's predicted time is a guess."""
    from .search.cost import SPEC
    if m["config"].get("batch_size", 1) > 1 and m["cost_model"] != SPEC:
        return (", UNCALIBRATED at a batch: the profile was fitted on one sequence's stamps, and a batch's "
                "figure runs 50-80% above what an H100 measures (docs/perf.md v51)")
    return ", UNCALIBRATED: no measured profile, the figure is a guess"


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--mlir-check", is_flag=True,
              help="Also verify the three IR levels in upstream MLIR with the artifact's adamk.irdl.mlir "
                   "(needs adamk[mlir]).")
def inspect(artifact, mlir_check):
    """Summarise an artifact and check every file against its manifest."""
    from .artifact import read_manifest, verify
    m = read_manifest(artifact)
    status = verify(artifact)
    model, k = m["model"], m["kernel"]
    packed = sum(len(e["sources"]) for e in m["packed_weights"]      # linear weights (packed_weights)
                 if isinstance(e, dict) and isinstance(e.get("sources"), list))
    lines = [
        f"artifact      {artifact}  (adamk {m['adamk_version']})",
        f"model         hidden {model['hidden_size']}, heads {model['num_heads']} (kv {model['num_kv_heads']}) x "
        f"{model['head_dim']}, intermediate {model['intermediate_size']}, max_seq_len {model['max_seq_len']}, "
        f"{model['layers']} layer(s)" + (f" in one loop: a whole model (embedding, LM head over {model['vocab_size']} "
                                         "tokens, greedy argmax)" if model.get("whole_model") else ""),
        f"target        {m['target']['gpu']} ({m['target']['arch']}), {k['grid']} blocks x {k['block_threads']} threads, "
        f"a batch of {m['config'].get('batch_size', 1)} sequence(s) a step",
        f"schedule      {len(m['tasks'])} tasks, {len(m['counters'])} counters",
        f"shared mem    {m['smem_peak_bytes']} B per block with a ring of {k['stages']} weight pages, "
        f"{k['pages_in_flight']} copied at once "
        f"(budget {m['target']['smem_per_block']} B); best plan without K-splitting: "
        f"{m['smem_peak_bytes_without_ksplit']} B",
        f"registers     {k['registers']} per thread, {k['spill_bytes']} B spilled",
        f"weights       {m['weight_bytes'] / 1e6:.2f} MB ({m['weight_read_bytes'] / 1e6:.2f} MB read a step), read "
        f"floor {m['weight_read_floor_us']} us at "
        f"{m['target']['dram_gbps']:.0f} GB/s; {packed} linear weights stored page by page on the device",
        f"predicted     {m['predicted_step_us']} us per step at position {m['predicted_at_pos']} "
        f"({m['config'].get('schedule')} schedule; cost model: {m['cost_model']}"
        f"{'' if m.get('predicted_calibrated') else uncalibrated(m)})",
        "files",
    ]
    lines += [f"  {'ok' if s == 'ok' else s.upper():10s} {name}" for name, s in sorted(status.items())]
    click.echo("\n".join(printable(line) for line in lines))      # the manifest is data: escaped
    if any(s != "ok" for s in status.values()):
        _fail(f"{artifact}: " + ", ".join(f"{quoted(n)} {s}" for n, s in status.items() if s != "ok"))
    if mlir_check:
        from .mlir_check import check_artifact, find_opt, opt_version
        opt = find_opt()
        results = check_artifact(artifact, opt)      # one clear error where opt is None
        out = [f"upstream MLIR ({Path(opt).name}, {opt_version(opt)}) with {artifact / 'adamk.irdl.mlir'}"]
        out += [f"  {'verified' if r is None else 'REJECTED':10s} {level}" + ("" if r is None else f": {r}")
                for level, r in results.items()]
        click.echo("\n".join(printable(line) for line in out))
        if any(r is not None for r in results.values()):
            _fail(f"{artifact}: upstream MLIR rejects " + ", ".join(lv for lv, r in results.items() if r is not None))


@main.command()
def dialect():
    """Print the adamk dialect as IRDL (what every artifact holds as adamk.irdl.mlir)."""
    from .dialects.irdl import dialect_irdl
    click.echo(dialect_irdl(), nl=False)


@main.command()
@click.option("--gpu", required=True, help="The GPU this machine has, as a target name (see `adamk gpus`).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The cost profile (JSON) to write.")
@click.option("--preset", default="llama-3.2-1b", show_default=True, help="The layer to measure with.")
@click.option("--pos", default=512, show_default=True, type=int, help="KV position of the measured steps.")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(min=1),
              help="Fit rounds; each after the first also traces the schedule the search picks with the fit so far.")
def calibrate(gpu, output, preset, pos, rounds):
    """Measure the cost model on this machine's GPU (needs CUDA) and write a profile for
    `adamk compile --cost-model`."""
    from .artifact import check_output_file
    from .calibrate import calibrate as run
    check_output_file(output)                # before minutes of measurement, not after them
    model, traces = run(gpu, preset, pos, rounds, progress=_progress)
    output.parent.mkdir(parents=True, exist_ok=True)      # checked writable above
    model.save(output)
    _say(f"wrote {output}: {model.sm_bytes_per_us / 1e3:.1f} GB/s per SM, poll {model.poll_latency_us:.2f} us, "
         f"task overhead {model.task_overhead_us:.2f} us, launch {model.launch_us:.1f} us")
    for label, measured, predicted in traces:
        _say(f"  traced {label}: measured {measured:.1f} us, the fit predicts {predicted:.1f} us "
             f"({(predicted - measured) / measured:+.1%})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def gpus(as_json):
    """List the GPUs adamk can target and the specs it plans with."""
    from .targets import GPUS
    if as_json:
        click.echo(json.dumps({n: g.__dict__ for n, g in GPUS.items()}, indent=2))
        return
    click.echo(f"{'gpu':8s} {'arch':6s} {'SMs':>4s} {'smem/SM':>8s} {'smem/block':>10s} {'L2':>6s} {'DRAM GB/s':>9s} "
               f"{'stages':>6s} {'in flight':>9s} {'batch':>5s}")
    for g in GPUS.values():
        click.echo(f"{g.name:8s} {g.sm:6s} {g.num_sms:4d} {g.smem_per_sm // 1024:6d}KB {g.smem_per_block // 1024:8d}KB "
                   f"{g.l2_bytes >> 20:4d}MB {g.dram_gbps:9.0f} {g.weight_stages:6d} {g.pages_in_flight:9d} "
                   f"{g.pages_in_flight_at(2):5d}")
