"""GPU tests of a batch (issue 14): B sequences per step, each at its own position, on the
tensor cores' linears (linear_mma.cuh); every sequence against float32 PyTorch of that sequence
alone (marker `gpu`)."""
import dataclasses
import random

import pytest
import torch

import adamk
from adamk.errors import AdamkError
from adamk.models import PRESETS, DecoderLayer, LlamaModel
from helpers import bf16_exact
from helpers import rel_t as rel

pytestmark = pytest.mark.gpu


def positions_for(batch: int, max_seq: int) -> list[int]:
    """Different positions per sequence, the first and the last of the cache among them."""
    return [0, max_seq - 1] + [random.randrange(max_seq) for _ in range(batch - 2)]


@pytest.mark.parametrize("gpu", ["H200", "L20"])
@pytest.mark.parametrize("preset,batch", [("tiny", 4), ("tiny", 16), ("llama-3.2-1b", 4), ("llama-3.2-1b", 16)])
def test_batched_layer_matches_float32_per_sequence(preset, batch, gpu, tmp_path):
    cfg = PRESETS[preset]
    layer = bf16_exact(DecoderLayer(cfg, seed=random.randrange(2**31)))
    path = adamk.compile(layer, adamk.CompileConfig(gpu=gpu, batch_size=batch)).save(tmp_path / "layer")
    step = adamk.load(path, layer)
    assert step.batch == batch
    ref_layer = layer.cuda()
    x = torch.randn(batch, cfg.hidden_size).bfloat16().cuda()
    kc = torch.randn(batch, cfg.num_kv_heads, cfg.max_seq_len, cfg.head_dim).bfloat16().cuda()
    vc = torch.randn_like(kc)
    step.k_cache.copy_(kc)
    step.v_cache.copy_(vc)
    positions = positions_for(batch, cfg.max_seq_len)
    with pytest.raises(AdamkError, match="one position per sequence"):
        step.launch(3)                   # an int would leave the sequences where the buffer had them
    y = step(x, positions).reshape(batch, -1)
    assert torch.isfinite(y.float()).all()
    for b, pos in enumerate(positions):
        ref_k, ref_v = kc[b:b + 1].float().clone(), vc[b:b + 1].float().clone()
        with torch.no_grad():
            ref = ref_layer(x[b:b + 1].float(), torch.tensor(pos, device="cuda"), ref_k, ref_v).reshape(-1)
        assert rel(y[b], ref) <= 1e-2, (b, pos, rel(y[b], ref))
        assert rel(step.k_cache[b, :, pos], ref_k[0, :, pos]) <= 1e-2, (b, pos)
        assert rel(step.v_cache[b, :, pos], ref_v[0, :, pos]) <= 1e-2, (b, pos)
        others = [t for t in range(cfg.max_seq_len) if t != pos]
        assert torch.equal(step.k_cache[b, :, others], kc[b, :, others]), "a task wrote outside its cache row"


@pytest.mark.parametrize("gpu", ["H200", "L20"])
@pytest.mark.parametrize("batch", [2, 4, 16])
def test_batched_whole_model_decodes_each_sequence_as_float32(batch, gpu, tmp_path):
    """Two, four or sixteen sequences at different positions, six greedy steps: each step's logits
    of every sequence against float32 PyTorch of that sequence alone, its next id that argmax (or
    within bf16 rounding of it), then back to back from the same start: the same ids. At batch 2
    an argmax thread requests two columns of each sequence at once; at batch 16 a vocabulary of
    9,000: nine argmax chunks of 1,024 logits, two sequences a consumer warp in argmax_combine."""
    cfg = PRESETS["tiny"] if batch < 16 else dataclasses.replace(PRESETS["tiny"], vocab_size=9000)
    model = bf16_exact(LlamaModel(cfg, seed=random.randrange(2**31)))
    c = model.cfg
    path = adamk.compile(model, adamk.CompileConfig(gpu=gpu, batch_size=batch)).save(tmp_path / "model")
    step = adamk.load(path, model)
    start = [random.randrange(1, 40) for _ in range(batch)]
    kc = torch.randn(c.num_layers, batch, c.num_kv_heads, c.max_seq_len, c.head_dim).bfloat16()
    vc = torch.randn_like(kc)
    step.k_cache.copy_(kc)
    step.v_cache.copy_(vc)
    ref_k, ref_v = kc.float(), vc.float()
    tokens = [random.randrange(c.vocab_size) for _ in range(batch)]
    first, steps = list(tokens), []
    for i in range(6):
        positions = [p + i for p in start]
        logits, nxt = step(tokens, positions)
        for b in range(batch):
            with torch.no_grad():
                ref = model(torch.tensor([tokens[b]]), torch.tensor(positions[b]), ref_k[:, b:b + 1],
                            ref_v[:, b:b + 1]).reshape(-1)
            assert rel(logits[b].cpu(), ref) < 1e-2, (i, b)
            top = ref.max().item()
            assert nxt[b] == int(ref.argmax()) or top - ref[nxt[b]].item() <= 1e-2 * ref.abs().max().item()
        steps.append(nxt)
        tokens = nxt
    step.k_cache.copy_(kc)
    step.v_cache.copy_(vc)
    step.start(first, start)
    step.run(6, start)
    assert step.generated(start, 6) == [[s[b] for s in steps] for b in range(batch)]


def test_engine_decodes_several_prompts_together(tmp_path):
    """Four prompts of different lengths prefilled into their rows, then decoded together: each
    sequence's every new id is float32 PyTorch's argmax given the ids before it (or within bf16
    rounding of it), at its own positions."""
    batch, model = 4, bf16_exact(LlamaModel(PRESETS["tiny"], seed=random.randrange(2**31)))
    c = model.cfg
    path = adamk.compile(model, adamk.CompileConfig(gpu="H200", batch_size=batch)).save(tmp_path / "model")
    engine = adamk.Engine(path, model)
    prompts = [[random.randrange(c.vocab_size) for _ in range(n)] for n in (1, 5, 17, 30)]
    result = engine.generate(prompts, 12)
    assert len(result.tokens) == batch and all(len(t) == 12 for t in result.tokens)
    for prompt, new in zip(prompts, result.tokens):
        kc = torch.zeros(c.num_layers, 1, c.num_kv_heads, c.max_seq_len, c.head_dim)
        vc = torch.zeros_like(kc)
        seq = prompt + new
        for pos in range(len(seq) - 1):
            with torch.no_grad():
                ref = model(torch.tensor([seq[pos]]), torch.tensor(pos), kc, vc).reshape(-1)
            if pos >= len(prompt) - 1:
                token = seq[pos + 1]
                assert token == int(ref.argmax()) or ref.max() - ref[token] <= 1e-2 * ref.abs().max(), (prompt, pos)
