"""A whole model's decode step on the megakernel: `adamk.load(dir, weights)` of an artifact
compiled from a whole model (embedding, layers, LM head, argmax in one kernel).

The token ids and the position live on the device: `tokens` holds the sequence's ids (the host
writes the one at the start position, each step's argmax the next), and the position sits in
one of two slots by the epoch's parity (each step reads its slot and writes pos + 1 into the
other), so consecutive steps are launches with no host work between them, back to back or
as replays of one captured CUDA graph. The KV caches are `[layers, batch, kv_heads, max_seq_len,
head_dim]`: positions before the start must hold the prompt's keys and values (a prefill).

A batch (`CompileConfig(batch_size=B)`) decodes B sequences per step, each at its own position:
`tokens` [B, max_seq_len + 1] and the positions [B, 2], one row per sequence; `start`, `run`,
`generated` and a call take one token and one position per sequence.
"""
from __future__ import annotations

from ..artifact import read_manifest
from ..errors import AdamkError
from .decode import DecodeStep


class ModelStep(DecodeStep):
    """`logits, token = step(token, pos)`: one step at `pos` for the id `token`; or `start(token,
    pos)` then `launch()` / `run(n)` / a `graph()` replay per step, the ids then read with
    `generated(pos, n)`."""

    def __init__(self, path, *args, **kwargs):
        if not read_manifest(path)["model"].get("whole_model"):      # before binding any weight
            raise AdamkError("this artifact is one decoder layer: load it with adamk.load for `y = step(x, pos)`")
        super().__init__(path, *args, **kwargs)
        self.logits_buffer = self.manifest["model"]["logits_buffer"]
        self.vocab_size = self.manifest["model"]["vocab_size"]
        # [batch, max_seq_len + 1] ids and [batch, 2] positions (views: the launches write them); with
        # one sequence, `tokens` and `positions` are its row
        self.batch_tokens, self.batch_positions = self.buffers["tokens"], self.buffers[self.position_buffer]
        self.tokens, self.positions = self.batch_tokens[0], self.batch_positions[0]

    def start(self, token, pos):
        """The next launch decodes `token` at `pos`: the id into the sequence, the position into both
        slots (the launch reads the slot of its epoch's parity, and a zeroing at the epoch wrap before
        it moves one slot into the other). A batch: one token and one position per sequence."""
        tokens, positions = self._per_sequence(token), self._per_sequence(pos)
        if len(tokens) != self.batch or len(positions) != self.batch:
            raise AdamkError(f"{len(tokens)} tokens and {len(positions)} positions for a batch of {self.batch}")
        for t, p in zip(tokens, positions):
            self._check_position(int(p))
            if not 0 <= int(t) < self.vocab_size:
                raise AdamkError(f"token id {int(t)} outside the vocabulary 0..{self.vocab_size - 1}")
        if self._session:
            self._session.start([int(t) for t in tokens], [int(p) for p in positions],
                                self.torch.cuda.current_stream(self.device).cuda_stream)
            return
        for b, (t, p) in enumerate(zip(tokens, positions)):
            self.batch_tokens[b, int(p)] = int(t)
            self.batch_positions[b].fill_(int(p))

    def _zero_state(self):
        """As a layer's, keeping the positions: each moves to the slot of epoch 1's parity."""
        positions = self.batch_positions[:, (self.epoch + 1) & 1].clone()
        super()._zero_state()
        self.batch_positions[:, 1] = positions

    def launch(self, stream=None):
        """Enqueue one step at the device's position (no host work: back-to-back launches decode on)."""
        super().launch(0, stream)

    def graph(self):
        """One step captured in a CUDA graph: `replay()` runs the next step (the position and the
        token come from the device, so one graph serves every step)."""
        return super().graph(0)

    def _per_sequence(self, value) -> list:
        """A token or position argument as one entry per sequence: one sequence's value, a batch's list."""
        return [value] if self.batch == 1 else list(value)

    def _launch_position(self, pos) -> int:
        return 0                          # every sequence's position is the device's (start, the argmax)

    def _arguments(self, pos: int):
        return super()._arguments(0)      # the kernel reads the position from the device

    def run(self, steps: int, pos):
        """`steps` launches back to back from position `pos` (started with `start`; a batch: each
        sequence's); checks every sequence fits the KV cache first."""
        for p in self._per_sequence(pos):
            if int(p) + steps > self.max_seq_len:
                raise AdamkError(f"{steps} steps from position {int(p)} pass the KV cache's {self.max_seq_len} "
                                 "positions (the artifact's max_seq_len)")
        for _ in range(steps):
            self.launch()

    def generated(self, pos, steps: int):
        """The ids the steps from `pos` wrote: those at pos + 1 .. pos + steps (a batch: a list per
        sequence, each from its own start position)."""
        self.check()
        if self.batch == 1:
            return self.tokens[pos + 1:pos + 1 + steps].tolist()
        rows = self.batch_tokens.tolist()
        return [rows[b][int(p) + 1:int(p) + 1 + steps] for b, p in enumerate(pos)]

    def read_bytes(self, pos) -> int:
        """Bytes a step at `pos` (a batch: each sequence's) must read: its weights (an embedding
        table's one row) and the KV rows 0..pos of every layer: what the weight-read floor divides
        by the copy bandwidth."""
        m = self.manifest["model"]
        rows = sum(int(p) + 1 for p in self._per_sequence(pos))
        kv = 2 * m["layers"] * m["num_kv_heads"] * rows * m["head_dim"] * self.k_cache.element_size()
        return self.manifest["weight_read_bytes"] + kv

    def logits(self):
        """The last step's logits (float32 [vocab]; a batch: [batch, vocab])."""
        words = self.buffers[self.logits_buffer].reshape(-1)
        values = words.view(self.torch.int32)[0::2].view(self.torch.float32).clone()    # the low halves
        return values if self.batch == 1 else values.view(self.batch, -1)

    def __call__(self, token, pos):
        """One step: (logits, the next token), or for a batch (logits [batch, vocab], a list of next tokens)."""
        self.start(token, pos)
        self.launch()
        self.check()
        if self.batch == 1:
            return self.logits(), int(self.tokens[pos + 1])
        return self.logits(), [int(self.batch_tokens[b, int(p) + 1]) for b, p in enumerate(pos)]
