"""CompileConfig: the deployment a megakernel is compiled for (frozen and hashable)."""
from __future__ import annotations

import dataclasses

from .errors import AdamkError
from .targets import get_gpu

SCHEDULES = ("search", "round-robin", "barrier", "queue")
CONSUMER_WARPS = 8    # warps of a block that compute (common.cuh kConsumerWarps, emitted into kernel.cu)
MAX_TILE_ROWS = 32   # rows of a linear task's pages (emitted into kernel.cu; linear.cuh static_asserts it)


def producer_warps(arch: int) -> int:
    """Warps of a block that stream weights (common.cuh kProducerWarps, emitted into kernel.cu):
    on sm_90 one lane drives the bulk-copy engine; before it, cp.async needs more lanes issuing
    to keep an SM's share of DRAM bandwidth in flight."""
    return 1 if arch >= 90 else 4


def block_threads(arch: int) -> int:
    return 32 * (CONSUMER_WARPS + producer_warps(arch))
MAX_SEARCH_BUDGET_S = 3600.0
# The DAG search's default wall-clock bound: the 1B model's search completes in ~10 s at batch 1 and
# in 21-23 s at batches 8 and 16 on this 2-core CPU machine (docs/search.md); a search that hits
# the bound stops early and its schedule may then depend on the machine's speed, so the margin is wide.
SEARCH_BUDGET_S = 60.0
MAX_BATCH = 16        # sequences one kernel decodes per step (a linear's batch is the N of one mma tile)
ATTENTION_PARTS = (1, 2, 4, 8, 16)   # the sequence splits of an attention the search considers (dag_search.py)
_TYPES = {"int": (int,), "bool": (bool,), "str": (str,), "float": (int, float), "int | None": (int, type(None)),
          "str | None": (str, type(None))}


def _check_type(name: str, value, declared: str):
    kinds = _TYPES[declared]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        want = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
        raise AdamkError(f"CompileConfig.{name}={value!r} must be {want}")


@dataclasses.dataclass(frozen=True)
class CompileConfig:
    gpu: str = "L20"
    batch_size: int = 1
    max_seq_len: int | None = None    # None: take it from the traced KV cache
    dtype: str = "bf16"               # storage of weights, KV cache, input and output
    tile_rows: int = 16               # output rows of one linear task (the spatial axis of the smem model)
    stages: int | None = None         # weight pages in each SM's ring (temporal axis); None: the GPU's default
                                      # (fewer at a batch whose whole-row linears need the room: docs/smem.md)
    stage_bytes: int = 32 * 1024      # bytes of one weight page of the SM's ring (docs/smem.md)
    pages_in_flight: int | None = None   # pages an SM copies at once; None: the GPU's default
    ksplit: bool = True               # split reductions (linears over K, attention over the sequence)
    attention_parts: int | None = None   # sequence parts of every attention; None: the search's choice
    gate_up: bool = True              # fuse a SwiGLU's gate and up linears into one gated linear (fuse.py) where
                                      # its work area fits (a large batch's may not: smem.gated_fits)
    num_sms: int | None = None        # blocks of the persistent kernel; None: every SM of the GPU
    profile: bool = False             # record globaltimer stamps per task (see benchmarks/trace_layer.py)
    schedule: str = "search"          # "search" (the DAG search), or the ablation's "round-robin", "barrier",
                                      # "queue" (blocks take tasks from an atomic counter at run time)
    search_budget_s: float = SEARCH_BUDGET_S     # wall-clock bound of the DAG search
    cost_model: str | None = None     # a profile from `adamk calibrate`; None: the GPU's shipped profile
                                      # (adamk/profiles), else the spec table's defaults

    def __post_init__(self):
        for field in dataclasses.fields(self):   # the declared types, checked: 16.0 is not a tile_rows
            _check_type(field.name, getattr(self, field.name), field.type)
        target = get_gpu(self.gpu)   # raises on an unknown name
        object.__setattr__(self, "gpu", target.name)     # "l20" and "L20" are one config, one artifact
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise AdamkError(f"batch_size={self.batch_size} outside 1..{MAX_BATCH}")
        if self.dtype != "bf16":
            raise NotImplementedError(f"dtype={self.dtype}: only bf16 storage is implemented")
        warps = CONSUMER_WARPS
        if self.tile_rows <= 0 or (self.tile_rows % warps and warps % self.tile_rows):
            raise AdamkError(f"tile_rows={self.tile_rows} must be a multiple of {warps} (warps per block) "
                             f"or divide it")
        if self.tile_rows > MAX_TILE_ROWS:
            raise AdamkError(f"tile_rows={self.tile_rows} exceeds {MAX_TILE_ROWS}: a task's row sums are "
                             f"reduced across a warp's lanes (linear.cuh linear_task)")
        if self.schedule not in SCHEDULES:
            raise AdamkError(f"schedule='{self.schedule}' is not one of {', '.join(SCHEDULES)}")
        if self.schedule == "queue" and self.profile:
            raise NotImplementedError("profile=True is not implemented for the work-queue variant")
        if not 0 < self.search_budget_s <= MAX_SEARCH_BUDGET_S:      # nan and inf fail this too
            raise AdamkError(f"search_budget_s={self.search_budget_s} must be in (0, {MAX_SEARCH_BUDGET_S}] seconds")
        if self.max_seq_len is not None and self.max_seq_len <= 0:
            raise AdamkError(f"max_seq_len={self.max_seq_len} must be positive")
        if self.stages is not None and not 1 <= self.stages <= 16:
            raise AdamkError(f"stages={self.stages} outside 1..16")
        if self.pages_in_flight is not None and not 1 <= self.pages_in_flight <= 8:
            raise AdamkError(f"pages_in_flight={self.pages_in_flight} outside 1..8")
        if self.schedule == "queue" and ((self.stages or 1) != 1 or (self.pages_in_flight or 1) != 1):
            raise AdamkError("the queue schedule streams one page at a time (a block cannot stage tasks it has not "
                             f"taken yet): stages={self.stages} and pages_in_flight={self.pages_in_flight} do not apply")
        if self.pages_in_flight is not None and self.pages_in_flight > self.depth:
            raise AdamkError(f"pages_in_flight={self.pages_in_flight} exceeds the ring's {self.depth} pages ("
                             + (f"stages={self.stages}" if self.stages else f"the {target.name}'s default stages")
                             + "): the pages being copied are slots of the ring")
        if self.stage_bytes < 256 or self.stage_bytes % 16:
            raise AdamkError(f"stage_bytes={self.stage_bytes} must be a multiple of 16 and at least 256")
        if self.stage_bytes >= target.smem_per_block:
            raise AdamkError(f"stage_bytes={self.stage_bytes}: one page of the ring would fill the {target.name}'s "
                             f"{target.smem_per_block} B of shared memory per block")
        if self.attention_parts is not None and self.attention_parts not in ATTENTION_PARTS:
            raise AdamkError(f"attention_parts={self.attention_parts} must be one of "
                             f"{', '.join(map(str, ATTENTION_PARTS))}")
        if self.attention_parts not in (None, 1) and not self.ksplit:
            raise AdamkError(f"attention_parts={self.attention_parts} splits the attention, which ksplit=False forbids")
        if self.num_sms is not None and not 0 < self.num_sms <= target.num_sms:
            raise AdamkError(f"num_sms={self.num_sms} outside 1..{target.num_sms} for {target.name}")

    @property
    def block_threads(self) -> int:
        return block_threads(self.target.arch)

    @property
    def target(self):
        return get_gpu(self.gpu)

    @property
    def depth(self) -> int:
        if self.schedule == "queue":
            return 1              # a block cannot stage tasks it has not taken yet
        return self.stages or self.target.weight_stages

    @property
    def in_flight(self) -> int:
        """Pages of the ring being copied at once: at most the ring's depth; by default the
        target's for this batch size (targets.py)."""
        return min(self.depth, self.pages_in_flight or self.target.pages_in_flight_at(self.batch_size))

    @property
    def blocks(self) -> int:
        return self.num_sms or self.target.num_sms

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
