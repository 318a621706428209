"""CompileConfig: the deployment a megakernel is compiled for (frozen and hashable)."""
from __future__ import annotations

import dataclasses

from .errors import AdamkError
from .targets import get_gpu

BLOCK_THREADS = 256   # threads per block of the persistent kernel (8 warps); the device library assumes it


@dataclasses.dataclass(frozen=True)
class CompileConfig:
    gpu: str = "L20"
    batch_size: int = 1
    max_seq_len: int | None = None    # None: take it from the traced KV cache
    dtype: str = "bf16"               # storage of weights, KV cache, input and output
    tile_rows: int = 16               # output rows of one linear task
    num_sms: int | None = None        # blocks of the persistent kernel; None: every SM of the GPU
    profile: bool = False             # record globaltimer stamps per task (see benchmarks/trace_layer.py)

    def __post_init__(self):
        target = get_gpu(self.gpu)   # raises on an unknown name
        if self.batch_size != 1:
            raise NotImplementedError(f"batch_size={self.batch_size}: only batch 1 decode is implemented")
        if self.dtype != "bf16":
            raise NotImplementedError(f"dtype={self.dtype}: only bf16 storage is implemented")
        if self.tile_rows <= 0 or self.tile_rows % (BLOCK_THREADS // 32):
            raise AdamkError(f"tile_rows={self.tile_rows} must be a positive multiple of {BLOCK_THREADS // 32} (warps per block)")
        if self.num_sms is not None and not 0 < self.num_sms <= target.num_sms:
            raise AdamkError(f"num_sms={self.num_sms} outside 1..{target.num_sms} for {target.name}")

    @property
    def target(self):
        return get_gpu(self.gpu)

    @property
    def blocks(self) -> int:
        return self.num_sms or self.target.num_sms

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
