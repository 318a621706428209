"""GPU spec table: the facts the compiler plans against (DESIGN.md, "GPU facts")."""
from __future__ import annotations

import dataclasses

from .errors import UnknownGPUError
from .names import quoted

KB = 1024
GB = 1 << 30


@dataclasses.dataclass(frozen=True)
class GPU:
    name: str
    arch: int                 # compute capability as an integer: 89 = sm_89
    num_sms: int
    smem_per_sm: int          # bytes
    smem_per_block: int       # largest opt-in dynamic shared memory of one block, bytes
    l2_bytes: int
    dram_gbps: float          # datasheet DRAM bandwidth, GB/s
    weight_stages: int        # default weight pages in flight per SM: enough bytes in flight to cover
                              # the DRAM latency at this SM's share of the bandwidth, within smem_per_block
    memory_bytes: int         # device memory: the weights and KV caches must fit in it
    pages_in_flight: int = 2  # weight pages an SM copies at once (ring.cuh): its share of the bandwidth
                              # needs ~ bandwidth x latency bytes in flight; more only queue in front
                              # of the step's small reads
    batch_pages_in_flight: int | None = None   # the same for a batch of 2..16 sequences (None: as one):
                              # its staging points make a dependent round trip to L2 per sequence, each
                              # queued behind the SM's copies, so fewer copies at once win there
                              # (docs/perf.md v38: measured on an H100 with the H200 target)

    @property
    def sm(self) -> str:
        return f"sm_{self.arch}"

    @property
    def next_step_l2(self) -> bool:
        """Whether its producers prefetch the next step's first pages into L2 (kinds.NextStepL2Pages): the
        bulk prefetch (`cp.async.bulk.prefetch.L2`) is sm_90's."""
        return self.arch >= 90

    def pages_in_flight_at(self, batch: int) -> int:
        """The default pages in flight for a batch of `batch` sequences."""
        return self.batch_pages_in_flight if batch > 1 and self.batch_pages_in_flight else self.pages_in_flight


GPUS: dict[str, GPU] = {g.name: g for g in [
    GPU("L20", 89, 92, 100 * KB, 99 * KB, 96 * KB * KB, 864.0, 2, 48 * GB),
    GPU("L40S", 89, 142, 100 * KB, 99 * KB, 96 * KB * KB, 864.0, 2, 48 * GB),
    GPU("RTX4090", 89, 128, 100 * KB, 99 * KB, 72 * KB * KB, 1008.0, 2, 24 * GB),
    GPU("H100", 90, 132, 228 * KB, 227 * KB, 50 * KB * KB, 3350.0, 6, 80 * GB, batch_pages_in_flight=1),
    GPU("H200", 90, 132, 228 * KB, 227 * KB, 60 * KB * KB, 4800.0, 6, 141 * GB, batch_pages_in_flight=1),
]}

_ALIASES = {"RTX 4090": "RTX4090", "4090": "RTX4090", "H100 SXM": "H100", "H100-SXM": "H100"}


def get_gpu(name: str) -> GPU:
    if not isinstance(name, str):
        raise UnknownGPUError(f"GPU name {name!r} is not a string; known GPUs: {', '.join(GPUS)}")
    key = _ALIASES.get(name, name)
    for g in GPUS.values():
        if g.name.lower() == key.lower():
            return g
    raise UnknownGPUError(f"unknown GPU {quoted(name)}; known GPUs: {', '.join(GPUS)}")
