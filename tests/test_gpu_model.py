"""GPU tests of a whole model's megakernel (embedding, layers, LM head, argmax in one kernel)
against float32 PyTorch (marker `gpu`)."""
import random

import pytest
import torch

import adamk
from adamk.errors import AdamkError
from adamk.models import PRESETS, LlamaModel
from helpers import bf16_exact, causal_lm
from helpers import rel_t as rel

pytestmark = pytest.mark.gpu


def bf16_model(preset: str) -> LlamaModel:
    """A random model whose float32 weights are exactly representable in bf16."""
    return bf16_exact(LlamaModel(PRESETS[preset], seed=random.randrange(2**31)))


@pytest.fixture(scope="module", params=["H200", "L20"])
def tiny(request, tmp_path_factory):
    """(a random bf16 tiny model, its loaded whole-model step) for the target."""
    model = bf16_model("tiny")
    path = adamk.compile(model, adamk.CompileConfig(gpu=request.param)).save(tmp_path_factory.mktemp("model"))
    step = adamk.load(path, model)
    step.path = path
    return model, step


def history(model, step, pos):
    """Random keys and values before `pos` in the step's caches (a prefill's); the float32 copies."""
    c = model.cfg
    kc = torch.randn(c.num_layers, 1, c.num_kv_heads, c.max_seq_len, c.head_dim).bfloat16()
    vc = torch.randn_like(kc)
    kc[..., pos:, :] = 0
    vc[..., pos:, :] = 0
    step.k_cache.copy_(kc)
    step.v_cache.copy_(vc)
    return kc.float(), vc.float()


def agrees(logits, ref, token) -> bool:
    """The kernel's token is the reference's argmax, or within bf16 rounding of it (a near tie)."""
    top = ref.topk(2).values
    return token == int(ref.argmax()) or (top[0] - ref[token]).item() <= 1e-2 * ref.abs().max().item()


def test_each_step_matches_float32_and_picks_its_argmax(tiny):
    model, step = tiny
    pos = random.randrange(1, 40)
    kc, vc = history(model, step, pos)
    token = random.randrange(model.cfg.vocab_size)
    for p in range(pos, pos + 8):
        logits, nxt = step(token, p)
        with torch.no_grad():
            ref = model(torch.tensor([token]), torch.tensor(p), kc, vc).reshape(-1)
        assert rel(logits.cpu(), ref) < 1e-2, p
        assert agrees(logits.cpu(), ref, nxt), (p, nxt, int(ref.argmax()))
        token = nxt


def test_back_to_back_steps_and_graph_replays_need_no_host(tiny):
    """Steps launched back to back (and as replays of one graph) carry the token and the position
    on the device: they generate what one step at a time generates."""
    model, step = tiny
    pos = random.randrange(1, 40)
    kc, vc = history(model, step, pos)
    token = random.randrange(model.cfg.vocab_size)
    one_by_one, t = [], token
    for p in range(pos, pos + 12):
        t = step(t, p)[1]
        one_by_one.append(t)
    step.k_cache.copy_(kc.bfloat16())
    step.v_cache.copy_(vc.bfloat16())
    step.start(token, pos)
    step.run(12, pos)
    assert step.generated(pos, 12) == one_by_one
    step.k_cache.copy_(kc.bfloat16())
    step.v_cache.copy_(vc.bfloat16())
    step.start(token, pos)
    replay = step.graph()
    for _ in range(12):
        replay()
    assert step.generated(pos, 12) == one_by_one


def test_bad_token_and_position_are_clear_errors(tiny):
    model, step = tiny
    with pytest.raises(AdamkError, match="token id 331 outside the vocabulary 0..330"):
        step(model.cfg.vocab_size, 3)
    with pytest.raises(AdamkError, match="10 steps from position 75 pass the KV cache's 80 positions"):
        step.run(10, 75)
    step.positions.fill_(200)        # a position the device holds, out of range
    step.launch()
    with pytest.raises(AdamkError, match="position 200 outside the KV cache's 0..79"):
        step.check()
    step.reset()


def reference_greedy(model, ids, new):
    """Float32 PyTorch decoding token by token from empty caches: the logits before each new token
    (teacher-forced on `new`, the kernel's tokens, so a near tie cannot derail the comparison)."""
    c = model.cfg
    k = torch.zeros(c.num_layers, 1, c.num_kv_heads, c.max_seq_len, c.head_dim)
    v = torch.zeros_like(k)
    seq, out = list(ids) + list(new), []
    with torch.no_grad():
        for p in range(len(seq) - 1):
            logits = model(torch.tensor([seq[p]]), torch.tensor(p), k, v).reshape(-1)
            if p >= len(ids) - 1:
                out.append(logits)
    return out


def test_engine_prefills_in_pytorch_and_decodes_what_float32_decodes(tiny):
    model, step = tiny
    engine = adamk.Engine(step.path, model)
    prompt = [random.randrange(model.cfg.vocab_size) for _ in range(random.randrange(2, 30))]
    result = engine.generate(prompt, 24)
    assert len(result.tokens) == 24 and len(result.step_s) == 24 and result.tokens_per_s > 0
    for i, (ref, token) in enumerate(zip(reference_greedy(model.cpu(), prompt, result.tokens), result.tokens)):
        assert agrees(None, ref, token), (i, token, int(ref.argmax()))
    with pytest.raises(AdamkError, match="exceed the artifact's max_seq_len 80"):
        engine.generate(prompt, 81 - len(prompt))


def test_cli_run_streams_the_engines_tokens(tiny, tmp_path):
    import subprocess
    import sys
    from safetensors.torch import save_file
    model, step = tiny
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    prompt = [random.randrange(model.cfg.vocab_size) for _ in range(5)]
    want = adamk.Engine(step.path, model).generate(prompt, 6).tokens
    run = subprocess.run([sys.executable, "-m", "adamk", "run", str(step.path), "--weights", str(tmp_path / "model.safetensors"),
                          "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", "6"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert [int(t) for t in run.stdout.split()] == want
    assert "tokens/s" in run.stderr
    bench = subprocess.run([sys.executable, "-m", "adamk", "bench", str(step.path), "--weights",
                            str(tmp_path / "model.safetensors"), "--pos", "5", "--steps", "20"],
                           capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0 and "of it" in bench.stderr, bench.stderr


def test_soak_twenty_thousand_steps_across_epoch_wraps(tiny):
    """20,000 consecutive launches (sequences restarted at position 0 as the cache fills), the
    epoch forced to wrap every 997 steps; every 1,000th step and the first after each wrap checked
    against float32 PyTorch on the caches the kernel holds just before it."""
    model, step = tiny
    ref = model.cuda()           # moved back to the CPU at the end (the other tests run it there)
    step.reset()
    step.max_epoch = 997
    c = model.cfg
    step.k_cache.normal_()
    step.v_cache.normal_()
    token, pos, checked = 3, 0, 0
    step.start(token, pos)
    for i in range(20000):
        check = i % 1000 == 999 or step.epoch == step.max_epoch        # the next launch wraps the epoch
        if check:
            step.check()
            token = int(step.tokens[pos])
            kc, vc = step.k_cache.float().clone(), step.v_cache.float().clone()
        if pos == c.max_seq_len - 1:                # the cache is full: a new sequence from position 0
            step.check()
            token, pos = int(step.tokens[pos]), 0
            step.start(token, pos)
            if check:
                kc, vc = step.k_cache.float().clone(), step.v_cache.float().clone()
        step.launch()
        if check:
            step.check()
            with torch.no_grad():
                want = ref(torch.tensor([token], device="cuda"), torch.tensor(pos, device="cuda"), kc, vc).reshape(-1)
            assert rel(step.logits(), want) < 1e-2, (i, pos)
            assert agrees(None, want.cpu(), int(step.tokens[pos + 1])), (i, pos)
            checked += 1
        pos += 1
    step.check()
    assert checked >= 40
    model.cpu()


def test_a_profiling_build_stamps_every_layer(tmp_path):
    """A profiling build of a whole model stamps each layer's tasks in that layer's slice: a task
    of the loop runs on one SM layer after layer, so its stamps grow with the layer; a task outside
    the loop stamps layer 0's slice only; and the stamped step still decodes as float32 does."""
    model = bf16_model("tiny")
    path = adamk.compile(model, adamk.CompileConfig(gpu="H200", profile=True)).save(tmp_path / "p")
    step = adamk.load(path, model)
    pos = random.randrange(1, 40)
    kc, vc = history(model, step, pos)
    token = random.randrange(model.cfg.vocab_size)
    logits, _ = step(token, pos)
    with torch.no_grad():
        assert rel(logits.cpu(), model(torch.tensor([token]), torch.tensor(pos), kc, vc).reshape(-1)) < 1e-2
    layers = [step.trace(layer) for layer in range(model.cfg.num_layers)]
    loop = {t for t, row in enumerate(layers[1]) if row[1]}
    assert loop and len(loop) < len(layers[0])          # the embedding, LM head and argmax are not in it
    for t, row in enumerate(layers[0]):
        assert row[1] > 0 and row[1] <= row[2] <= row[3], row          # reached <= inputs in <= end
        for later in layers[1:]:
            assert (later[t][1] >= row[3]) if t in loop else later[t][1] == 0, (t, row, later[t])
    n = model.cfg.num_layers
    with pytest.raises(AdamkError, match=rf"no stamps of layer {n}: the artifact has {n} layer\(s\)"):
        step.trace(n)


def hf_dims(dims: str, vocab: int):
    from adamk.models import LlamaConfig
    if dims == "tiny":
        return LlamaConfig(hidden_size=96, num_heads=6, num_kv_heads=2, head_dim=16, intermediate_size=200,
                           num_layers=3, vocab_size=vocab, rms_eps=1e-6, rope_theta=10000.0, max_seq_len=128)
    c = PRESETS["llama-3.2-1b"]            # the 1B preset's dims, a 128-position cache
    return LlamaConfig(hidden_size=c.hidden_size, num_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
                       head_dim=c.head_dim, intermediate_size=c.intermediate_size, num_layers=c.num_layers,
                       vocab_size=vocab, rms_eps=c.rms_eps, rope_theta=c.rope_theta, max_seq_len=128)


@pytest.mark.parametrize("kind,dims,vocab,tie", [("llama", "tiny", 5000, False), ("qwen2", "tiny", 301, True),
                                                 ("qwen3", "tiny", 301, True), ("llama", "1b", 128256, False),
                                                 ("qwen2", "1b", 128256, True), ("qwen3", "1b", 128256, True)])
def test_greedy_tokens_equal_hugging_face_generate(kind, dims, vocab, tie, tmp_path):
    """64 new tokens after a 32-token random prompt: the engine's (PyTorch prefill, megakernel
    decode) equal transformers' `generate` (eager attention, float32) up to the first near tie,
    where the reference prefers its token to ours by less than our logits' error (bf16 rounding);
    there the logits agree instead.
    Tiny configs and the 1B preset's dims (16 layers, a 128256-token vocabulary)."""
    pytest.importorskip("transformers")
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from export_onnx import hf_model
    step = bf16_exact(hf_model(kind, hf_dims(dims, vocab), seed=random.randrange(2**31), tie=tie))
    path = adamk.compile(step, adamk.CompileConfig(gpu="H200")).save(tmp_path / kind)
    engine = adamk.Engine(path, step)
    prompt = [random.randrange(vocab) for _ in range(32)]
    ours = engine.generate(prompt, 64).tokens
    lm = causal_lm(step).cuda()
    with torch.no_grad():
        ids = torch.tensor([prompt], device="cuda")   # the mask given: without it, generate masks prompt ids == pad id
        out = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                          output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    theirs = out.sequences[0, 32:].tolist()
    if ours == theirs:
        return
    i = next(j for j, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    ref = out.logits[i][0].float().cpu()
    seq = prompt + ours
    logits, _ = engine.step(seq[32 + i - 1], 32 + i - 1)
    logits = logits.cpu()
    assert rel(logits, ref) < 1e-2
    # a near tie: the reference prefers its token to ours by less than our logits' own error (bf16
    # weights and KV rows against float32), so either pick is within rounding
    margin, error = (ref.max() - ref[ours[i]]).item(), (logits - ref).abs().max().item()
    assert margin <= 2 * error, f"token {i} differs by {margin:.3g}, beyond the logits' error {error:.3g}"
