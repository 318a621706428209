"""GPU tests: the megakernel against the float32 PyTorch reference (marker `gpu`)."""
import os
import random
import re

import pytest
import torch

import adamk
import adamk.frontend.onnx_frontend
from adamk.models import compile_presets
from adamk.errors import KernelSharedMemoryError, KernelTimeoutError
from adamk.runtime import driver as cu
from adamk.models import PRESETS, DecoderLayer
from helpers import bf16_exact
from helpers import rel_t as rel

pytestmark = pytest.mark.gpu


def bf16_layer(preset: str) -> DecoderLayer:
    """A random layer whose float32 weights are exactly representable in bf16."""
    return bf16_exact(DecoderLayer(PRESETS[preset], seed=random.randrange(2**31)))


def _key(preset, gpu, options):
    return preset, gpu, tuple(sorted(options.items()))


@pytest.fixture(scope="module")
def compiled(request, tmp_path_factory):
    """(preset, gpu, options) -> (a random bf16 layer, its artifact). The plans of the
    selected reference tests compile up front in parallel processes (the kernel does not
    depend on the weights' values), any other on first use; each call binds fresh random
    weights. Under pytest-xdist every plan compiles on first use: each worker collects every
    test, so up-front compiles would build every plan once per worker, each worker with its own
    pool of processes (`-n 8` on the device's 16 cores did not finish in 150 s, docs/perf.md v72)."""
    items = [] if os.environ.get("PYTEST_XDIST_WORKER") else request.session.items
    plans = {_key(i.callspec.params["preset"], i.callspec.params["gpu"], i.callspec.params["options"])
             for i in items if i.originalname == "test_layer_matches_float32_reference"}
    plans = sorted(plans, key=str)
    jobs = [(p, adamk.CompileConfig(gpu=g, **dict(o))) for p, g, o in plans]
    paths = dict(zip(plans, compile_presets(jobs, tmp_path_factory.mktemp("plans"))))

    def get(preset, gpu, **options):
        key = _key(preset, gpu, options)
        if key not in paths:
            paths[key] = compile_presets([(preset, adamk.CompileConfig(gpu=gpu, **options))],
                                         tmp_path_factory.mktemp("plan"))[0]
        return bf16_layer(preset), paths[key]
    return get


def draw_inputs(step, cfg):
    """Fresh random x and KV history, loaded into the step's cache; returns x and the history."""
    x = torch.randn(1, cfg.hidden_size).bfloat16().cuda()
    kc = torch.randn(1, cfg.num_kv_heads, cfg.max_seq_len, cfg.head_dim).bfloat16().cuda()
    vc = torch.randn_like(kc)
    step.k_cache.copy_(kc)
    step.v_cache.copy_(vc)
    return x, kc, vc


# (preset, gpu, options): both targets with the default (searched) plan, every reduction of the
# tiny layer split (512 B stages), plans without K-splitting, gate and up unfused, a gated linear
# whose last tile is short (344 rows in tiles of 32), and the ablation's schedules.
PLANS = [("tiny", "L20", {}), ("tiny", "H100", {}), ("tiny", "H100", {"stage_bytes": 512}),
         ("tiny", "H100", {"gate_up": False}), ("tiny", "H100", {"tile_rows": 32, "schedule": "round-robin"}),
         ("tiny", "L20", {"ksplit": False}), ("tiny", "H100", {"schedule": "round-robin"}),
         ("tiny", "L20", {"schedule": "barrier"}), ("tiny", "H100", {"schedule": "queue", "stage_bytes": 512}),
         ("llama-3.2-1b", "L20", {}), ("llama-3.2-1b", "H100", {}), ("llama-3.2-1b", "H100", {"ksplit": False}),
         ("llama-3.2-1b", "H100", {"schedule": "queue"})]


def positions(cfg):
    return sorted({p for p in (0, 1, 511, cfg.max_seq_len - 1) if p < cfg.max_seq_len})


@pytest.mark.parametrize("preset,gpu,options", PLANS)
def test_layer_matches_float32_reference(compiled, preset, gpu, options):
    layer, path = compiled(preset, gpu, **options)
    cfg = layer.cfg
    step = adamk.load(path, layer)
    if not options.get("ksplit", True):
        suffixes = {t.rsplit(".", 1)[-1][0] for t in step.manifest["tasks"]}   # .k<j>: K-part, .s<j>: sequence part
        assert not {"k", "s"} & suffixes
    ref_layer = layer.cuda()
    for pos in positions(cfg):
        x, kc, vc = draw_inputs(step, cfg)
        y = step(x, pos)
        ref_k, ref_v = kc.float().clone(), vc.float().clone()
        with torch.no_grad():
            ref = ref_layer(x.float(), torch.tensor(pos, device="cuda"), ref_k, ref_v)
        assert torch.isfinite(y.float()).all()
        assert rel(y, ref) <= 1e-2, (preset, gpu, options, pos, rel(y, ref))
        assert rel(step.k_cache[:, :, pos], ref_k[:, :, pos]) <= 1e-2
        assert rel(step.v_cache[:, :, pos], ref_v[:, :, pos]) <= 1e-2
        others = [t for t in range(cfg.max_seq_len) if t != pos]
        assert torch.equal(step.k_cache[:, :, others], kc[:, :, others]), "a task wrote outside its cache row"
        assert torch.equal(step.v_cache[:, :, others], vc[:, :, others])


@pytest.mark.parametrize("gpu,parts,head_dim", [("H200", 1, 32), ("H200", 4, 32), ("L20", 4, 32), ("H200", 4, 96),
                                                 ("L20", 2, 128)])
def test_attention_on_the_tensor_cores_matches_float32(gpu, parts, head_dim, tmp_path):
    """The tiny layer with head_dim 32 and 128 (attention_rows_mma's path; the preset's 24 and 96,
    whose 84-row pages are not whole 16-row tiles, take the CUDA-core loop), whole and in sequence
    parts, at every fourth position and the last: outputs and the appended cache rows against float32."""
    import dataclasses
    cfg = dataclasses.replace(PRESETS["tiny"], head_dim=head_dim)
    layer = bf16_exact(DecoderLayer(cfg, seed=random.randrange(2**31)))
    path = adamk.compile(layer, adamk.CompileConfig(gpu=gpu, attention_parts=parts)).save(tmp_path / "a")
    assert re.search(rf"attention_task<\w+, {head_dim}, ", (path / "kernel.cu").read_text())
    step, ref_layer = adamk.load(path, layer), layer.cuda()
    for pos in [*range(0, cfg.max_seq_len, 4), cfg.max_seq_len - 1]:
        x, kc, vc = draw_inputs(step, cfg)
        y = step(x, pos)
        ref_k, ref_v = kc.float().clone(), vc.float().clone()
        with torch.no_grad():
            ref = ref_layer(x.float(), torch.tensor(pos, device="cuda"), ref_k, ref_v)
        assert rel(y, ref) <= 1e-2, (gpu, parts, pos, rel(y, ref))
        assert rel(step.k_cache[:, :, pos], ref_k[:, :, pos]) <= 1e-2


def test_kernel_shape_matches_target(compiled):
    for gpu, blocks in (("L20", 92), ("H100", 132)):
        layer, path = compiled("tiny", gpu)
        step = adamk.load(path, layer)
        assert step.grid == blocks
        assert step.loaded_from == ("ptx" if gpu == "L20" else "cubin")


def test_shared_memory_is_the_models_to_the_byte(compiled):
    """The kernel has no static shared memory, the launch gives exactly the model's figure, and a
    launch one byte short is caught by the task whose buffers pass the end."""
    layer, path = compiled("tiny", "H100", stage_bytes=512)
    step = adamk.load(path, layer, timeout_s=0.2)
    assert cu.function_attribute(step.fn, "SHARED_SIZE_BYTES") == 0
    assert cu.function_attribute(step.fn, "MAX_DYNAMIC_SHARED_SIZE_BYTES") == step.manifest["smem_peak_bytes"]
    x, _, _ = draw_inputs(step, layer.cfg)
    assert torch.isfinite(step(x, 5).float()).all()
    step.smem -= 1
    with pytest.raises(KernelSharedMemoryError, match=rf"task '.*' on block \d+ needs {step.smem + 1} B of shared "
                                                      rf"memory; the launch gave {step.smem} B"):
        step(x, 5)


@pytest.mark.parametrize("gpu,options,waited", [
    ("H100", {}, r"waited for '[\w.]+'\[\d+\] of step 1, saw a word of step 0"),
    ("L20", {"schedule": "barrier"}, r"waited (on counter 'barrier\.\d+' for \d+, saw \d+|for '[\w.]+'\[\d+\] of step 1)")])
def test_wait_timeout_names_task_and_what_it_waited_for(compiled, gpu, options, waited):
    """With a 1 ns timeout every wait for another block's work gives up: the launch still ends
    (a block that gave up runs on), and the error names the task and the word (or, in the
    barrier variant, the counter) it waited for. The step works again after a reset."""
    layer, path = compiled("tiny", gpu, **options)
    step = adamk.load(path, layer, timeout_s=1e-9)
    x = torch.randn(1, layer.cfg.hidden_size).bfloat16().cuda()
    step.buffers["x"].copy_(x)
    step.launch(3)
    with pytest.raises(KernelTimeoutError, match=rf"block \d+ running task '[\w.]+' {waited}"):
        step.check()
    step.reset()
    step.timeout_ns = int(2e9)
    y = step(x, 3)
    assert torch.isfinite(y.float()).all() and step.epoch == 1


def test_epochs_wrap_without_a_stale_word_passing(compiled):
    """Past the last epoch the runtime zeroes the tagged activations and counters and starts at
    epoch 1 again; steps on both sides of the wrap match the reference."""
    layer, path = compiled("tiny", "H100")
    step = adamk.load(path, layer)
    step.max_epoch = 3
    ref_layer = layer.cuda()
    for i in range(7):
        x, kc, vc = draw_inputs(step, layer.cfg)
        y = step(x, 5 + i)
        with torch.no_grad():
            ref = ref_layer(x.float(), torch.tensor(5 + i, device="cuda"), kc.float().clone(), vc.float().clone())
        assert rel(y, ref) <= 1e-2, (i, step.epoch)
    assert step.epoch == 1      # 1, 2, 3, then 1, 2, 3, then 1


def test_graph_replay_computes_the_step_and_advances_the_epoch(compiled):
    """A step captured in a CUDA graph (the cooperative launch recorded, the epoch on the device)
    computes what a launch computes, bit for bit, at a new epoch every replay, across the wrap."""
    layer, path = compiled("tiny", "H100")
    step = adamk.load(path, layer)
    step.max_epoch = 3
    x, kc, vc = draw_inputs(step, layer.cfg)
    want = step(x, 7)                       # epoch 1
    replay = step.graph(7)
    for i in range(4):                      # epochs 2, 3, then the wrap: 1, 2
        replay()
        step.check()
        assert torch.equal(step.buffers["y"], want), i
        assert step.epochs.tolist() == [step.epoch] * step.grid, (i, step.epoch)
    assert step.epoch == 2
    with torch.no_grad():
        ref = layer.cuda()(x.float(), torch.tensor(7, device="cuda"), kc.float().clone(), vc.float().clone())
    assert rel(want, ref) <= 1e-2


@pytest.mark.parametrize("kind,gpu", [("qwen2", "H100"), ("qwen3", "H200"), ("qwen3", "L20")])
def test_hf_qwen_layer_from_onnx_on_gpu(kind, gpu, tmp_path):
    """Qwen2 (q/k/v biases) and Qwen3 (each head's RMSNorm of q and k before RoPE, in the attention
    task) from ONNX, against transformers in float32."""
    pytest.importorskip("transformers")
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from export_onnx import export, hf_layer
    path = export(str(tmp_path / "hf.onnx"), "tiny", seed=random.randrange(2**31), hf=kind)
    art = adamk.compile(path, adamk.CompileConfig(gpu=gpu)).save(tmp_path / "out")
    step = adamk.load(art, path)
    ref = hf_layer(kind, PRESETS["tiny"], seed=0)          # structure only: weights come from the file
    ref.load_state_dict({k: v for k, v in adamk.frontend.onnx_frontend.weights_from_onnx(path).items()
                         if k in ref.state_dict()})
    ref = ref.cuda()
    cfg = PRESETS["tiny"]
    for pos in (0, 5, cfg.max_seq_len - 1):
        x = torch.randn(1, cfg.hidden_size).bfloat16().cuda()
        kc = torch.randn(1, cfg.num_kv_heads, cfg.max_seq_len, cfg.head_dim).bfloat16().cuda()
        vc = torch.randn_like(kc)
        step.k_cache.copy_(kc)
        step.v_cache.copy_(vc)
        y = step(x, pos)
        with torch.no_grad():
            want = ref(x.float(), torch.tensor(pos, device="cuda"), kc.float(), vc.float())
        assert rel(y, want) <= 1e-2, (pos, rel(y, want))
