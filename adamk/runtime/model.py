"""A whole model's decode step on the megakernel: `adamk.load(dir, weights)` of an artifact
compiled from a whole model (embedding, layers, LM head, argmax in one kernel).

The token ids and the position live on the device: `tokens` holds the sequence's ids (the host
writes the one at the start position, each step's argmax the next), and the position sits in
one of two slots by the epoch's parity (each step reads its slot and writes pos + 1 into the
other), so consecutive steps are launches with no host work between them, back to back or
as replays of one captured CUDA graph. The KV caches are `[layers, 1, kv_heads, max_seq_len,
head_dim]`: positions before the start must hold the prompt's keys and values (a prefill).
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
        self.position = next(b["name"] for b in self.manifest["buffers"] if b["role"] == "position")
        # [batch, max_seq_len + 1] ids and [batch, 2] positions; the device library decodes a batch of one,
        # so these are its sequence's (views: the launches write them)
        self.tokens, self.positions = self.buffers["tokens"][0], self.buffers[self.position][0]

    def start(self, token: int, pos: int):
        """The next launch decodes `token` at `pos`: the id into the sequence, the position into both
        slots (the launch reads the slot of its epoch's parity, and a zeroing at the epoch wrap before
        it moves one slot into the other)."""
        self._check_position(pos)
        if not 0 <= int(token) < self.vocab_size:
            raise AdamkError(f"token id {int(token)} outside the vocabulary 0..{self.vocab_size - 1}")
        if self._session:
            self._session.start(int(token), pos, self.torch.cuda.current_stream(self.device).cuda_stream)
            return
        self.tokens[pos] = int(token)
        self.positions.fill_(pos)

    def _zero_state(self):
        """As a layer's, keeping the position: it moves to the slot of epoch 1's parity."""
        pos = int(self.positions[(self.epoch + 1) & 1])
        super()._zero_state()
        self.positions[1] = pos

    def launch(self, stream=None):
        """Enqueue one step at the device's position (no host work: back-to-back launches decode on)."""
        super().launch(0, stream)

    def graph(self):
        """One step captured in a CUDA graph: `replay()` runs the next step (the position and the
        token come from the device, so one graph serves every step)."""
        return super().graph(0)

    def _arguments(self, pos: int):
        return super()._arguments(0)      # the kernel reads the position from the device

    def run(self, steps: int, pos: int):
        """`steps` launches back to back from position `pos` (started with `start`); checks the
        sequence fits the KV cache first."""
        if pos + steps > self.max_seq_len:
            raise AdamkError(f"{steps} steps from position {pos} pass the KV cache's {self.max_seq_len} positions "
                             "(the artifact's max_seq_len)")
        for _ in range(steps):
            self.launch()

    def generated(self, pos: int, steps: int) -> list[int]:
        """The ids the steps from `pos` wrote: those at pos + 1 .. pos + steps."""
        self.check()
        return self.tokens[pos + 1:pos + 1 + steps].tolist()

    def read_bytes(self, pos: int) -> int:
        """Bytes a step at `pos` must read: its weights (an embedding table's one row) and the KV rows
        0..pos of every layer: what the weight-read floor divides by the copy bandwidth."""
        m = self.manifest["model"]
        kv = 2 * m["layers"] * m["num_kv_heads"] * (pos + 1) * m["head_dim"] * self.k_cache.element_size()
        return self.manifest["weight_read_bytes"] + kv

    def logits(self):
        """The last step's logits (float32 [vocab])."""
        words = self.buffers[self.logits_buffer].reshape(-1)
        return words.view(self.torch.int32)[0::2].view(self.torch.float32).clone()    # the low halves

    def __call__(self, token: int, pos: int):
        self.start(token, pos)
        self.launch()
        self.check()
        return self.logits(), int(self.tokens[pos + 1])
