"""GPU tests of the C++ runtime (adamk._runtime.Session, `launcher="cpp"`) against the Python
runtime's cuda-bindings launches, and of the PyTorch custom ops (marker `gpu`): the same artifact,
weights and inputs give bit-identical outputs, errors read the same, and the ops agree eager, in
a captured CUDA graph and under torch.compile."""
import random
import re

import pytest
import torch

import adamk
from adamk.errors import AdamkError, KernelTimeoutError
from adamk.models import PRESETS, DecoderLayer, LlamaModel
from adamk.runtime import op
from helpers import bf16_exact
from helpers import rel_t as rel

pytestmark = pytest.mark.gpu
pytest.importorskip("adamk._runtime")


@pytest.fixture(scope="module", params=["H200", "L20"])
def layer(request, tmp_path_factory):
    """(a random bf16 tiny layer, its artifact) for the target."""
    layer = bf16_exact(DecoderLayer(PRESETS["tiny"], seed=random.randrange(2**31)))
    return layer, adamk.compile(layer, adamk.CompileConfig(gpu=request.param)).save(tmp_path_factory.mktemp("l"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model = bf16_exact(LlamaModel(PRESETS["tiny"], seed=random.randrange(2**31)))
    return model, adamk.compile(model, adamk.CompileConfig(gpu="H200")).save(tmp_path_factory.mktemp("m"))


def both(path, weights, **kwargs):
    return adamk.load(path, weights, **kwargs), adamk.load(path, weights, launcher="cpp", **kwargs)


def same_history(steps, shape):
    kc, vc = torch.randn(shape).bfloat16().cuda(), torch.randn(shape).bfloat16().cuda()
    for s in steps:
        s.k_cache.copy_(kc)
        s.v_cache.copy_(vc)
    return kc, vc


def decode_both_ways(steps, kc, vc, token, pos, n: int = 12) -> list:
    """Each step from the history `kc`, `vc`: `n` launches back to back from `token` at `pos` (a
    batch: one of each per sequence), then again as `n` replays of one captured graph. Returns the
    ids the launches generated, having checked that every step's replays generated them too."""
    runs = []
    for s in steps:
        for graph in (False, True):
            s.k_cache.copy_(kc)
            s.v_cache.copy_(vc)
            s.start(token, pos)
            if graph:
                replay = s.graph()
                for _ in range(n):
                    replay()
            else:
                s.run(n, pos)
            runs.append(s.generated(pos, n))
    assert all(r == runs[0] for r in runs), runs
    return runs[0]


def test_layer_steps_are_bit_identical_across_launchers(layer):
    """Seven steps across two forced epoch wraps, then graph replays: the C++ session's outputs and
    caches equal the cuda-bindings launches' bit for bit, and match float32."""
    mod, path = layer
    a, b = both(path, mod)
    assert b.loaded_from == a.loaded_from and b.max_epoch == a.max_epoch
    a.max_epoch = b.max_epoch = 3
    c = mod.cfg
    for i in range(7):
        pos = random.randrange(c.max_seq_len)
        kc, vc = same_history((a, b), (1, c.num_kv_heads, c.max_seq_len, c.head_dim))
        x = torch.randn(1, c.hidden_size).bfloat16().cuda()
        ya, yb = a(x, pos), b(x, pos)
        assert torch.equal(ya, yb), (i, pos, rel(ya, yb))
        assert torch.equal(a.k_cache, b.k_cache) and torch.equal(a.v_cache, b.v_cache), (i, pos)
    assert a.epoch == b.epoch == 1
    with torch.no_grad():
        ref = mod.cuda()(x.float(), torch.tensor(pos, device="cuda"), kc.float(), vc.float())
    assert rel(yb, ref) <= 1e-2, (pos, rel(yb, ref))
    ra, rb = a.graph(pos), b.graph(pos)
    for i in range(4):                     # epochs 2, 3, then the wrap: 1, 2
        ra()
        rb()
        a.check()
        b.check()
        assert torch.equal(a.buffers["y"], yb) and torch.equal(b.buffers["y"], yb), i
    assert a.epoch == b.epoch == 2


def test_model_steps_are_bit_identical_across_launchers(model):
    """A whole model: steps one at a time, back to back and as graph replays generate the same
    tokens and logits through both launchers."""
    mod, path = model
    a, b = both(path, mod)
    c = mod.cfg
    pos = random.randrange(1, 40)
    shape = (c.num_layers, 1, c.num_kv_heads, c.max_seq_len, c.head_dim)
    kc, vc = same_history((a, b), shape)
    token = random.randrange(c.vocab_size)
    la, ta = a(token, pos)
    lb, tb = b(token, pos)
    assert torch.equal(la, lb) and ta == tb
    decode_both_ways((a, b), kc, vc, token, pos)
    assert torch.equal(a.logits(), b.logits())


def test_a_batch_steps_bit_identically_across_launchers(tmp_path):
    """Batches of 3 sequences, each at its own position: a layer's steps (across a forced epoch
    wrap, then graph replays) and a whole model's back-to-back steps and replays (across wraps, the
    positions kept per sequence) give the same outputs, caches and tokens through both launchers."""
    from adamk import _runtime
    batch = 3
    mod = bf16_exact(DecoderLayer(PRESETS["tiny"], seed=random.randrange(2**31)))
    c = mod.cfg
    path = adamk.compile(mod, adamk.CompileConfig(gpu="H200", batch_size=batch)).save(tmp_path / "layer")
    session = _runtime.Session(str(path))
    assert session.batch == batch
    with pytest.raises(AdamkError, match="decodes one position per sequence: set_positions before the first launch"):
        session.launch(0)
    with pytest.raises(AdamkError, match="2 positions for a batch of 3 sequences"):
        session.set_positions([1, 2])
    del session
    a, b = both(path, mod)
    a.max_epoch = b.max_epoch = 3
    for i in range(5):
        positions = [random.randrange(c.max_seq_len) for _ in range(batch)]
        same_history((a, b), (batch, c.num_kv_heads, c.max_seq_len, c.head_dim))
        x = torch.randn(batch, c.hidden_size).bfloat16().cuda()
        ya, yb = a(x, positions), b(x, positions)
        assert torch.equal(ya, yb), (i, positions, rel(ya, yb))
        assert torch.equal(a.k_cache, b.k_cache) and torch.equal(a.v_cache, b.v_cache), (i, positions)
    ra, rb = a.graph(positions), b.graph(positions)
    for i in range(4):
        ra()
        rb()
        a.check()
        b.check()
        assert torch.equal(a.buffers["y"], yb) and torch.equal(b.buffers["y"], yb), i

    model = bf16_exact(LlamaModel(PRESETS["tiny"], seed=random.randrange(2**31)))
    c = model.cfg
    path = adamk.compile(model, adamk.CompileConfig(gpu="H200", batch_size=batch)).save(tmp_path / "model")
    a, b = both(path, model)
    a.max_epoch = b.max_epoch = 5                   # 12 steps: two wraps, each moving every sequence's position
    kc, vc = same_history((a, b), (c.num_layers, batch, c.num_kv_heads, c.max_seq_len, c.head_dim))
    tokens = [random.randrange(c.vocab_size) for _ in range(batch)]
    start = [random.randrange(1, 40) for _ in range(batch)]
    with pytest.raises(AdamkError, match="1 tokens and 1 positions for a batch of 3"):
        b._session.start([tokens[0]], [start[0]])
    decode_both_ways((a, b), kc, vc, tokens, start)
    assert torch.equal(a.logits(), b.logits())


def test_errors_read_the_same_through_both_launchers(layer, model):
    """A timed-out wait names the task and the word it waited for, a bad device position is named,
    in the same words; both steps work again after reset()."""
    mod, path = layer
    x = torch.randn(1, mod.cfg.hidden_size).bfloat16().cuda()
    for s in both(path, mod, timeout_s=1e-9):
        s.buffers["x"].copy_(x)
        s.launch(3)
        with pytest.raises(KernelTimeoutError, match=r"megakernel wait timed out: block \d+ running task '[\w.]+' "
                                                     r"waited (for '[\w.]+'\[\d+\] of step 1, saw a word of step 0|"
                                                     r"on a weight page for \d+, saw \d+)"):
            s.check()
        s.reset()
        s.timeout_ns = int(2e9)
        assert torch.isfinite(s(x, 3).float()).all() and s.epoch == 1
    mod, path = model
    messages = []
    for s in both(path, mod):
        s.positions.fill_(200)
        s.launch()
        with pytest.raises(AdamkError) as e:
            s.check()
        messages.append(str(e.value))
        s.reset()
        assert s(5, 3)[1] >= 0
    assert messages[0] == messages[1] == "position 200 outside the KV cache's 0..79"


def test_a_graph_someone_else_captured_runs_until_the_kernel_refuses_an_exhausted_epoch(layer):
    """A launch recorded into the caller's own CUDA graph replays correctly; its replays are not
    counted, so once the device's epochs pass max_epoch the kernel refuses to run and check()
    says why; reset() recovers."""
    mod, path = layer
    step = adamk.load(path, mod)
    c = mod.cfg
    same_history((step,), (1, c.num_kv_heads, c.max_seq_len, c.head_dim))
    x = torch.randn(1, c.hidden_size).bfloat16().cuda()
    want = step(x, 9)
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    with torch.cuda.graph(graph, stream=stream):
        step.launch(9)
    for _ in range(3):
        graph.replay()
        step.check()
        assert torch.equal(step.buffers["y"], want)
    last = step.max_epoch                      # as if that many launches had passed uncounted (u32 words)
    step.epochs.fill_(last - 2**32 if last >= 2**31 else last)
    graph.replay()
    with pytest.raises(AdamkError, match=rf"ran out of epochs \(launch at epoch {step.max_epoch + 1}, the last is "
                                         rf"{step.max_epoch}\).*reset\(\) the step"):
        step.check()
    step.reset()
    assert torch.equal(step(x, 9), want)


@pytest.mark.parametrize("launcher", ["cuda-bindings", "cpp"])
def test_the_ops_agree_eager_in_a_graph_and_under_torch_compile(layer, model, launcher):
    mod, path = layer
    step = adamk.load(path, mod, launcher=launcher)
    c = mod.cfg
    same_history((step,), (1, c.num_kv_heads, c.max_seq_len, c.head_dim))
    x = torch.randn(1, c.hidden_size).bfloat16().cuda()
    pos = random.randrange(c.max_seq_len)
    eager = op.call(step, x, pos)
    assert torch.equal(eager, step(x, pos))
    graph, out = torch.cuda.CUDAGraph(), None
    with torch.cuda.graph(graph):
        out = op.call(step, x, pos)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
    h, order = op.register(step), step.op_order
    compiled = torch.compile(lambda t: torch.ops.adamk.layer_step(h, t, pos, order) * 1.0, fullgraph=True,
                             dynamic=False)
    assert torch.equal(compiled(x), eager)
    step.check()

    mod, path = model
    step = adamk.load(path, mod, launcher=launcher)
    c = mod.cfg
    same_history((step,), (c.num_layers, 1, c.num_kv_heads, c.max_seq_len, c.head_dim))
    token = torch.tensor([random.randrange(c.vocab_size)], dtype=torch.int32, device="cuda")
    at = torch.tensor([random.randrange(1, 40)], dtype=torch.int32, device="cuda")
    logits, nxt = op.call(step, token, at)
    want_logits, want = step(int(token), int(at))
    assert torch.equal(logits, want_logits) and int(nxt) == want
    with torch.cuda.graph(graph := torch.cuda.CUDAGraph()):
        g_logits, g_next = op.call(step, token, at)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(g_logits, want_logits) and int(g_next) == want
    h, order = op.register(step), step.op_order
    compiled = torch.compile(lambda t, p: torch.ops.adamk.model_step(h, t, p, order), fullgraph=True, dynamic=False)
    c_logits, c_next = compiled(token, at)
    assert torch.equal(c_logits, want_logits) and int(c_next) == want
    step.check()
    with pytest.raises(AdamkError, match=re.escape("is a whole model: call torch.ops.adamk.model_step")):
        torch.ops.adamk.layer_step(op.register(step), x, 0, step.op_order)


@pytest.fixture(scope="module")
def batch_steps(tmp_path_factory):
    """(module, artifact) of a tiny layer and a tiny whole model compiled for a batch of 3."""
    layer = bf16_exact(DecoderLayer(PRESETS["tiny"], seed=random.randrange(2**31)))
    model = bf16_exact(LlamaModel(PRESETS["tiny"], seed=random.randrange(2**31)))
    config = adamk.CompileConfig(gpu="H200", batch_size=3)
    return [(m, adamk.compile(m, config).save(tmp_path_factory.mktemp("b"))) for m in (layer, model)]


@pytest.mark.parametrize("launcher", ["cuda-bindings", "cpp"])
def test_the_model_op_decodes_a_batch_eager_in_a_graph_and_under_torch_compile(batch_steps, launcher):
    """A whole model's batch of 3, each sequence at its own position: model_step with [3] tokens and
    positions gives the step's own logits and tokens eager, replayed in a captured graph and under
    torch.compile; a wrong number of tokens is refused. A batch's layer is refused by the layer op
    (its positions are the host's), and so is a capture that would copy them from the host."""
    (layer, layer_path), (model, model_path) = batch_steps
    batch = 3
    step = adamk.load(model_path, model, launcher=launcher)
    c = model.cfg
    same_history((step,), (c.num_layers, batch, c.num_kv_heads, c.max_seq_len, c.head_dim))
    ids = [random.randrange(c.vocab_size) for _ in range(batch)]
    start = [random.randrange(1, 40) for _ in range(batch)]
    token = torch.tensor(ids, dtype=torch.int32, device="cuda")
    at = torch.tensor(start, dtype=torch.int32, device="cuda")
    logits, nxt = op.call(step, token, at)
    want_logits, want = step(ids, start)
    assert logits.shape == (batch, c.vocab_size) and torch.equal(logits, want_logits) and nxt.tolist() == want
    with torch.cuda.graph(graph := torch.cuda.CUDAGraph()):
        g_logits, g_next = op.call(step, token, at)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(g_logits, want_logits) and g_next.tolist() == want
    h, order = op.register(step), step.op_order
    compiled = torch.compile(lambda t, p: torch.ops.adamk.model_step(h, t, p, order), fullgraph=True, dynamic=False)
    c_logits, c_next = compiled(token, at)
    assert torch.equal(c_logits, want_logits) and c_next.tolist() == want
    step.check()
    with pytest.raises(AdamkError, match="2 tokens and 2 positions for a batch of 3 sequences"):
        torch.ops.adamk.model_step(h, token[:2], at[:2], order)

    step = adamk.load(layer_path, layer, launcher=launcher)
    c = layer.cfg
    x = torch.randn(batch, c.hidden_size).bfloat16().cuda()
    positions = [random.randrange(c.max_seq_len) for _ in range(batch)]
    with pytest.raises(AdamkError, match=re.escape("is a layer of a batch of 3, whose positions the host writes")):
        op.call(step, x, positions[0])
    step.set_positions(positions)
    other = [(p + 1) % c.max_seq_len for p in positions]
    with pytest.raises(AdamkError, match=re.escape(f"a CUDA graph capture cannot write a batch's positions {other}")):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            step.launch(other)
    y = step(x, positions)          # the step works on after the refused capture
    step.check()
    assert y.shape[0] == batch


@pytest.fixture(scope="module")
def decode_example(tmp_path_factory):
    """examples/cpp's adamk-decode, built by CMake."""
    import shutil
    import subprocess
    from pathlib import Path
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    root, build = Path(__file__).resolve().parents[1], tmp_path_factory.mktemp("build")
    for cmd in (["cmake", "-S", root, "-B", build], ["cmake", "--build", build, "-j8", "--target", "adamk-decode"]):
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    return build / "examples/cpp/adamk-decode"


def test_the_cpp_example_decodes_what_the_python_runtime_decodes(model, decode_example, tmp_path):
    """examples/cpp (adamk-decode): the artifact, weights from a safetensors file, twelve steps back
    to back from one token at position 0; the tokens equal the Python runtime's."""
    import subprocess
    from safetensors.torch import save_file
    mod, path = model
    save_file({k: v.detach().contiguous().clone() for k, v in mod.state_dict().items()}, tmp_path / "w.safetensors")
    token = random.randrange(mod.cfg.vocab_size)
    r = subprocess.run([str(decode_example), str(path), str(tmp_path / "w.safetensors"),
                        "--token", str(token), "--steps", "12"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = [int(t) for t in r.stdout.splitlines()[0].removeprefix("tokens:").split()]
    step = adamk.load(path, mod)
    step.k_cache.zero_()
    step.v_cache.zero_()
    step.start(token, 0)
    step.run(12, 0)
    assert got == step.generated(0, 12)
    r = subprocess.run([str(decode_example), str(path), str(tmp_path / "w.safetensors"),
                        "--steps", str(mod.cfg.max_seq_len + 1)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "pass the KV cache's" in r.stderr


def test_the_cpp_example_decodes_a_batch(decode_example, tmp_path):
    """adamk-decode on an artifact of a batch of 3: every sequence from one token at position 0,
    each its own line of tokens, equal to the Python runtime's for that sequence."""
    import subprocess
    from safetensors.torch import save_file
    batch, model = 3, bf16_exact(LlamaModel(PRESETS["tiny"], seed=random.randrange(2**31)))
    path = adamk.compile(model, adamk.CompileConfig(gpu="H200", batch_size=batch)).save(tmp_path / "model")
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    token = random.randrange(model.cfg.vocab_size)
    r = subprocess.run([str(decode_example), str(path), str(tmp_path / "w.safetensors"), "--token", str(token),
                        "--steps", "6"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    step = adamk.load(path, model)
    step.k_cache.zero_()
    step.v_cache.zero_()
    step.start([token] * batch, [0] * batch)
    step.run(6, [0] * batch)
    want = step.generated([0] * batch, 6)
    lines = r.stdout.splitlines()
    assert lines[:batch] == [f"sequence {i} tokens: " + " ".join(map(str, want[i])) for i in range(batch)], lines


def test_the_session_refuses_an_artifact_for_a_newer_gpu(layer, tmp_path):
    """An artifact whose target is newer than the GPU has no image this GPU can run: one error."""
    import json
    import shutil
    from adamk import _runtime
    _, path = layer
    art = tmp_path / "newer"
    shutil.copytree(path, art)
    m = json.loads((art / "manifest.json").read_text())      # not among the hashed files
    m["target"]["arch"] = "sm_120"
    (art / "manifest.json").write_text(json.dumps(m))
    major, minor = torch.cuda.get_device_capability()
    with pytest.raises(AdamkError, match=rf"^artifact targets sm_120; this GPU is sm_{major}{minor}$"):
        _runtime.Session(str(art))


def test_a_profiling_build_stamps_the_same_tasks_through_both_launchers(tmp_path):
    """The C++ session owns a profiling build's stamps: every task is stamped in order (reached <=
    inputs in <= end) as through the cuda-bindings launches, and the outputs still agree."""
    mod = bf16_exact(DecoderLayer(PRESETS["tiny"], seed=random.randrange(2**31)))
    path = adamk.compile(mod, adamk.CompileConfig(gpu="H200", profile=True)).save(tmp_path / "p")
    a, b = both(path, mod)
    c = mod.cfg
    same_history((a, b), (1, c.num_kv_heads, c.max_seq_len, c.head_dim))
    x = torch.randn(1, c.hidden_size).bfloat16().cuda()
    assert torch.equal(a(x, 11), b(x, 11))
    ta, tb = a.trace(), b.trace()
    assert [row[0] for row in ta] == [row[0] for row in tb] == a.manifest["tasks"]
    for row in tb:
        assert 0 < row[1] <= row[2] <= row[3], row


def test_start_at_the_epoch_wrap_decodes_at_the_position_it_was_given(model):
    """With an odd max_epoch the zeroing at the wrap moves the other slot's position into the one the
    next launch reads: start() writes both, so a step started right at the wrap decodes where it
    was told (both launchers)."""
    mod, path = model
    token = random.randrange(mod.cfg.vocab_size)
    for launcher in ("cuda-bindings", "cpp"):
        s = adamk.load(path, mod, launcher=launcher)
        s.max_epoch = 3
        s.k_cache.zero_()
        s.v_cache.zero_()
        want = s(token, 0)                      # epoch 1
        s(token, 5)
        s(token, 6)                             # epoch 3: the next launch wraps
        s.k_cache.zero_()
        s.v_cache.zero_()
        got = s(token, 0)
        assert s.epoch == 1 and torch.equal(got[0], want[0]) and got[1] == want[1], launcher
