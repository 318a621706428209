"""GPU tests of a whole model's megakernel (embedding, layers, LM head, argmax in one kernel)
against float32 PyTorch (marker `gpu`)."""
import random

import pytest
import torch

import adamk
from adamk.errors import AdamkError
from adamk.models import PRESETS, LlamaModel

pytestmark = pytest.mark.gpu


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def bf16_model(preset: str) -> LlamaModel:
    """A random model whose float32 weights are exactly representable in bf16."""
    model = LlamaModel(PRESETS[preset], seed=random.randrange(2**31))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    return model


@pytest.fixture(scope="module", params=["H200", "L20"])
def tiny(request, tmp_path_factory):
    """(a random bf16 tiny model, its loaded whole-model step) for the target."""
    model = bf16_model("tiny")
    path = adamk.compile(model, adamk.CompileConfig(gpu=request.param)).save(tmp_path_factory.mktemp("model"))
    return model, adamk.load(path, model)


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
    step.buffers[step.position].fill_(200)        # a position the device holds, out of range
    step.launch()
    with pytest.raises(AdamkError, match="position 200 outside the KV cache's 0..79"):
        step.check()
    step.reset()
