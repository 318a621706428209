"""`adamk.load(dir, weights)`: a callable decode step backed by the megakernel.

The loader checks the artifact's sha256s, checks the weights against the manifest
(names, shapes), converts them to the storage dtype on the GPU, allocates the KV caches
and activations, fills the kernel's `Buffers` pointer table in manifest order, loads the
cubin (or JIT-compiles the PTX when the GPU is a newer arch than the target) and
launches cooperatively, so all blocks are co-resident or the launch fails with a clear
error. Each step runs at a new epoch: the tag a task writes into every activation word
(csrc/kernels/tagged.cuh) and the multiple the barrier variant's counters wait for. The epoch
lives on the device (every block keeps the last one in `epochs` and adds one per launch), so a
launch takes the same arguments every step and `graph(pos)` can replay one captured launch.
Tagged activations start at epoch 0 and epochs at 1; the host counts the launches, and before
the epoch passes the manifest's kernel.max_epoch (past it a counter's target or the 32-bit epoch
would wrap) the counters, activations and epochs are zeroed and the epochs start again. The
kernel refuses a launch past max_epoch, so replays the host did not count (a launch captured into
the caller's own CUDA graph) end in a clear error. With `launcher="cpp"` the C++ runtime
(adamk._runtime.Session, csrc/runtime/session.hpp) owns that state and launches; the buffers are
still this module's torch tensors.
"""
from __future__ import annotations

import ctypes
import re

from ..artifact import load_files
from ..errors import AdamkError, KernelSharedMemoryError, KernelTimeoutError
from ..kinds.base import TAGGED_DTYPES
from ..paths import KERNELS_DIR
from . import driver as cu
from .weights import check_weights, pack_pages, packing_plan, read_weights

TORCH_DTYPES = {"bf16": "bfloat16", "f32_tagged": "int64", "bf16x2_tagged": "int32",   # a tagged word: float32 value, epoch above it;
                "i32": "int32"}                                                  # a pair's: two bf16, epoch above (4 B an element)


def _error_record_facts() -> dict[str, int]:
    """ErrorReason's enumerators, kRingCounter and kErrorRecordWords, read from their one source
    (csrc/kernels/error_record.h, which the device code and the C++ runtime include)."""
    text = (KERNELS_DIR / "error_record.h").read_text()
    return {name: int(value.rstrip("u"), 0) for name, value in re.findall(r"\b(k\w+) = (0x[0-9a-f]+u?|\d+)", text)}


ERROR = _error_record_facts()
LAUNCHERS = ("cuda-bindings", "cpp")   # who owns the launch state: this module, or the C++ runtime's Session


class DecodeStep:
    """One layer's decode step: `y = step(x, pos)`; `k_cache` / `v_cache` persist across calls.

    `weights`: a torch module, a state_dict-like mapping, the path of the ONNX file the
    artifact was compiled from (its initializers), a safetensors file or a (sharded) Hugging
    Face checkpoint directory; `weights_prefix` keeps the names under it, the prefix replaced by
    `names_prefix` (`adamk.runtime.weights.read_weights`). With `keep_weights`, `self.weights`
    keeps the checked source tensors by manifest name (the engine's prefill uses them row-major)."""

    def __init__(self, path, weights, device=None, timeout_s: float = 2.0, weights_prefix: str = "",
                 names_prefix: str = "", keep_weights: bool = False, launcher: str = "cuda-bindings"):
        import torch
        self.torch = torch
        if launcher not in LAUNCHERS:
            raise AdamkError(f"launcher {launcher!r} is not one of {', '.join(LAUNCHERS)}")
        if not torch.cuda.is_available():
            raise AdamkError("adamk.load needs a CUDA GPU (torch.cuda.is_available() is False)")
        self.manifest, files = load_files(path)
        self.device = torch.device(device or "cuda")
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        torch.cuda.set_device(index)
        torch.empty(1, device=self.device)            # let torch create the primary context first
        cu.ensure_context(index)
        k = self.manifest["kernel"]
        self.grid, self.threads, self.smem = k["grid"], k["block_threads"], k["smem_bytes"]
        self._timeout_ns = int(timeout_s * 1e9)

        checked = check_weights(self.manifest, read_weights(weights, weights_prefix, names_prefix))
        self.buffers = self._bind(checked)
        self.weights = checked if keep_weights else None
        self.max_seq_len = self.buffers["k_cache"].shape[-2]
        self.batch = self.manifest["config"].get("batch_size", 1)      # sequences decoded per step
        # a batch's positions are on the device, one per sequence (a layer's: the host writes them)
        self.position_buffer = next((b["name"] for b in self.manifest["buffers"] if b["role"] == "position"), None)
        self._positions_written = None      # what set_positions last wrote (the kernel never writes a layer's)
        names = [b["name"] for b in self.manifest["buffers"]]
        n_tasks = len(self.manifest["tasks"])
        self.trace_slots = len(k.get("trace_slots", ()))
        # [layers][tasks][slots]: a whole model's loop stamps each layer in its slice (codegen/cuda.py)
        self.trace_layers = self.manifest["model"].get("layers", 1) if self.manifest["model"].get("whole_model") else 1
        self._session = None
        if launcher == "cpp":       # the C++ runtime owns the launch state; the buffers stay torch's
            self._session = _cpp_session(path, index, timeout_s)
            for name in names:
                t = self.buffers[name]
                self._session.bind(name, t.data_ptr(), t.numel() * t.element_size())
            self._session.prepare()
            self.loaded_from = self._session.loaded_from
            return
        self.pointer_table = torch.tensor([self.buffers[n].data_ptr() for n in names], dtype=torch.int64,
                                          device=self.device)
        self.counters = torch.zeros(max(1, len(self.manifest["counters"]) + k.get("extra_counters", 0)),
                                    dtype=torch.int32, device=self.device)
        self.error = torch.zeros(ERROR["kErrorRecordWords"], dtype=torch.int32, device=self.device)  # ErrorRecord
        self.trace_buffer = (torch.zeros(self.trace_layers * n_tasks * self.trace_slots, dtype=torch.int64,
                                         device=self.device) if k.get("profile") else None)
        self.epochs = torch.zeros(self.grid, dtype=torch.int32, device=self.device)   # per block: its last epoch
        self._epoch = 0      # launches since the last zeroing: the epoch the last launch ran at
        self._max_epoch = k["max_epoch"]     # the kernel refuses a later epoch (codegen/cuda.py max_epoch)
        self.tagged = [n for n, b in zip(names, self.manifest["buffers"]) if b["dtype"] in TAGGED_DTYPES]

        arch = int(self.manifest["target"]["arch"].removeprefix("sm_"))
        major, minor = torch.cuda.get_device_capability(index)
        device_arch = 10 * major + minor
        if device_arch == arch:
            image, self.loaded_from = files[f"kernel.sm_{arch}.cubin"], "cubin"
        elif device_arch > arch:
            image, self.loaded_from = files["kernel.ptx"] + b"\0", "ptx"     # driver JIT for the newer arch
        else:
            raise AdamkError(f"artifact targets sm_{arch}; this GPU is sm_{device_arch}")
        self.module, self.fn = cu.load_function(image, k["name"])
        cu.set_dynamic_smem(self.fn, self.smem)
        self._launcher = cu.CooperativeLaunch(self.fn, self.grid, self.threads)
        self._args = {}
        fit = cu.max_blocks_per_sm(self.fn, self.threads, self.smem) * cu.sm_count(index)
        if fit < self.grid:
            raise AdamkError(f"the megakernel needs {self.grid} co-resident blocks of {self.threads} threads and "
                             f"{self.smem} B shared memory; this GPU holds {fit}")

    def _bind(self, checked) -> dict:
        """Every buffer on the device: a layer-indexed one (a whole model's) as [slots, *shape], its
        weights stacked by slot (manifest weights' `buffer` and `slot`)."""
        torch = self.torch
        plan = packing_plan(self.manifest)
        slots: dict[str, list] = {}
        for w in self.manifest["weights"]:
            slots.setdefault(w.get("buffer", w["name"]), []).append(w["name"])
        out = {}
        for b in self.manifest["buffers"]:
            dtype = getattr(torch, TORCH_DTYPES[b["dtype"]])
            shape = ([b["slots"]] if "slots" in b else []) + b["shape"]
            if b["role"] == "weight":
                out[b["name"]] = torch.stack([checked[n].detach().to(device=self.device, dtype=dtype)
                                              for n in slots[b["name"]]]).view(shape).contiguous()
            elif b["role"] in ("kv_cache", "tokens", "position") or b["dtype"] in TAGGED_DTYPES:
                out[b["name"]] = torch.zeros(shape, dtype=dtype, device=self.device)   # tagged words: epoch 0
            else:
                out[b["name"]] = torch.full(shape, float("nan"), dtype=dtype, device=self.device)
        for e in plan:       # a linear's weights page by page (each slot's); the other sources share its buffer
            layered = "slots" in next(b for b in self.manifest["buffers"] if b["name"] == e["buffer"])
            per_slot = (lambda n, i: out[n][i]) if layered else (lambda n, i: out[n])
            count = out[e["buffer"]].shape[0] if layered else 1
            out[e["buffer"]] = torch.cat([pack_pages([per_slot(n, i) for n in e["sources"]], e["page_rows"],
                                                     e["page_cols"], e["k_chunk"], e["chunk_pages"])
                                          for i in range(count)])
            for n in e["sources"][1:]:
                out[n] = out[e["buffer"]]
        return out

    # The launch state's figures, the C++ session's with launcher="cpp".
    @property
    def epoch(self) -> int:
        """The epoch the last launch ran at (launches since the last zeroing)."""
        return self._session.epoch if self._session else self._epoch

    @property
    def max_epoch(self) -> int:
        """The last epoch before the runtime zeroes the state (tests lower it to force a wrap)."""
        return self._session.max_epoch if self._session else self._max_epoch

    @max_epoch.setter
    def max_epoch(self, value: int):
        if self._session:
            self._session.max_epoch = value
        else:
            self._max_epoch = value

    @property
    def timeout_ns(self) -> int:
        return round(self._session.timeout_s * 1e9) if self._session else self._timeout_ns

    @timeout_ns.setter
    def timeout_ns(self, value: int):
        if self._session:
            self._session.timeout_s = value * 1e-9
        else:
            self._timeout_ns = value

    @property
    def k_cache(self):
        return self.buffers["k_cache"]

    @property
    def v_cache(self):
        return self.buffers["v_cache"]

    def launch(self, pos, stream=None):
        """Enqueue one step at `pos` (a batch: a list of one position per sequence) on `stream`
        (torch's current stream by default) without waiting. Inside
        a CUDA graph capture the launch is recorded; replays of that graph are not counted, and the
        kernel refuses one that passes max_epoch (check() says so; `graph(pos)` counts its replays)."""
        stream = stream if stream is not None else self.torch.cuda.current_stream(self.device).cuda_stream
        pos = self._launch_position(pos)
        if self._session:
            self._session.launch(pos, stream)
            return
        args = self._arguments(pos)
        self._next_epoch()
        self._launcher(stream, args, self.smem)

    def graph(self, pos):
        """One step at `pos` captured in a CUDA graph; returns `replay()`, which enqueues it on
        torch's current stream (a new epoch every replay, as `launch`). The position and the
        timeout are the graph's (a later step needs its own graph; a batch's positions are the
        device buffer's, written now and read by every replay), and the graph is not handed
        out: every replay must pass through `replay()`, which counts it for the epoch wrap."""
        torch = self.torch
        graph, capture = torch.cuda.CUDAGraph(), torch.cuda.Stream(self.device)
        pos = self._launch_position(pos)        # a batch's positions: written now, replayed as they are then
        if self._session:
            self._check_position(pos)           # before the capture starts
            self._session.prepare()
            enqueue, advance = (lambda: self._session.enqueue(pos, capture.cuda_stream)), self._session.advance
        else:
            args = self._arguments(pos)
            enqueue, advance = (lambda: self._launcher(capture.cuda_stream, args, self.smem)), self._next_epoch
        with torch.cuda.graph(graph, stream=capture):
            enqueue()

        def replay():
            advance()
            graph.replay()
        return replay

    def _next_epoch(self):
        """Count a launch; before the epoch would pass max_epoch, zero the state (it starts again at 1).
        The zeroing waits for the GPU first, so no launch queued on another stream still runs."""
        if self._epoch >= self._max_epoch:          # >=: max_epoch may have been lowered below the count
            self.torch.cuda.synchronize(self.device)
            self._zero_state()
            self._epoch = 0
        self._epoch += 1

    def _launch_position(self, pos) -> int:
        """The launch's position argument. A batch takes one position per sequence (a list), written
        into the device buffer the kernel reads (`set_positions`); an int would leave the sequences
        at whatever the buffer held, so it is refused."""
        if self.batch == 1:
            return int(pos)
        if isinstance(pos, int):
            raise AdamkError(f"a batch of {self.batch} decodes one position per sequence: pass a list of "
                             f"{self.batch} positions, not {pos}")
        self.set_positions(pos)
        return int(pos[0])

    def _check_position(self, pos: int):
        if not 0 <= pos < self.max_seq_len:
            raise AdamkError(f"position {pos} outside the KV cache's 0..{self.max_seq_len - 1}")

    def _arguments(self, pos: int) -> cu.KernelArgs:
        self._check_position(pos)
        key = (pos, self._timeout_ns)
        if key not in self._args:
            values = {"buffers": ctypes.c_uint64(self.pointer_table.data_ptr()),
                      "counters": ctypes.c_uint64(self.counters.data_ptr()),
                      "error_record": ctypes.c_uint64(self.error.data_ptr()),
                      "trace": ctypes.c_uint64(self.trace_buffer.data_ptr() if self.trace_buffer is not None else 0),
                      "pos": ctypes.c_int32(pos), "epochs": ctypes.c_uint64(self.epochs.data_ptr()),
                      "timeout_ns": ctypes.c_uint64(self._timeout_ns)}
            self._args = {key: cu.KernelArgs(*kernel_arguments(self.manifest["kernel"]["args"], values))}
        return self._args[key]

    def check(self):
        """Wait for the GPU and raise if a wait timed out (names the task and what it waited for) or a
        task found too little shared memory. After either, `reset()` before the next step: the
        launch's blocks gave up (some without counting their epoch)."""
        if self._session:
            self._session.check()
            return
        self.torch.cuda.synchronize(self.device)
        err = self.error.tolist()
        if err[0]:
            flag, task, counter, expected, observed, block, reason, lo, hi = (e & 0xffffffff for e in err[:9])
            tasks = self.manifest["tasks"]
            name = tasks[task] if task < len(tasks) else task
            if reason == ERROR["kSmemOverflow"]:
                raise KernelSharedMemoryError(
                    f"megakernel task '{name}' on block {block} needs {expected} B of shared memory; "
                    f"the launch gave {observed} B")
            if reason == ERROR["kBadToken"]:
                raise AdamkError(f"token id {observed if observed < 2**31 else observed - 2**32} outside the "
                                 f"vocabulary 0..{expected - 1}")
            if reason == ERROR["kBadPosition"]:
                raise AdamkError(f"position {observed if observed < 2**31 else observed - 2**32} outside the KV "
                                 f"cache's 0..{expected - 1}")
            if reason == ERROR["kEpochsExhausted"]:
                raise AdamkError(f"the megakernel ran out of epochs (launch at epoch {observed}, the last is "
                                 f"{expected}): launches the runtime did not count (a CUDA graph it did not "
                                 "capture, replayed) passed the wrap; reset() the step")
            if reason == ERROR["kPollTimeout"]:
                raise KernelTimeoutError(
                    f"megakernel wait timed out: block {block} running task '{name}' waited for "
                    f"{self._element_at((hi << 32) | lo)} of step {expected}, saw a word of step {observed}")
            counters = {c["index"]: c["name"] for c in self.manifest["counters"]}
            what = "a weight page" if counter == ERROR["kRingCounter"] else f"counter '{counters.get(counter, counter)}'"
            raise KernelTimeoutError(
                f"megakernel wait timed out: block {block} running task '{name}' "
                f"waited on {what} for {expected}, saw {observed}")

    def _element_at(self, address: int) -> str:
        """'buffer'[i] of the tagged activation word at device `address`."""
        for name in self.tagged:
            t = self.buffers[name]
            i = (address - t.data_ptr()) // t.element_size()
            if 0 <= i < t.numel():
                return f"'{name}'[{i}]"
        return f"the word at {address:#x}"

    def trace(self, layer: int = 0):
        """Per-task globaltimer stamps of the last launch of a profiling build: a list of
        (task name, *stamps) in ns, the stamps in the order of the manifest's kernel.trace_slots
        (reached, inputs in, end, data in). A whole model's: those of layer `layer`'s loop tasks
        (the tasks outside the loop stamp in layer 0's list; 0 where a task has no stamp there)."""
        if not self.manifest["kernel"].get("profile"):
            raise AdamkError("this artifact was not compiled with CompileConfig(profile=True)")
        if not 0 <= layer < self.trace_layers:
            raise AdamkError(f"no stamps of layer {layer}: the artifact has {self.trace_layers} layer(s)")
        self.check()
        words = (self.torch.tensor(self._session.trace(), dtype=self.torch.int64) if self._session
                 else self.trace_buffer)
        stamps = words.view(self.trace_layers, -1, self.trace_slots)[layer].tolist()
        return [(name, *t) for name, t in zip(self.manifest["tasks"], stamps)]

    def _zero_state(self):
        """Counters, tagged activations and the blocks' epochs back to 0 (the next launch is epoch 1)."""
        self.counters.zero_()
        self.epochs.zero_()
        for name in self.tagged:
            self.buffers[name].zero_()

    def reset(self):
        """Zero the counters, the activations' tags, the epochs and the error record (after a timed-out launch)."""
        if self._session:
            self._session.reset()
            return
        self.torch.cuda.synchronize(self.device)
        self._zero_state()
        self.error.zero_()
        self._epoch = 0

    def set_positions(self, positions):
        """A batch's positions, one per sequence, into the device buffer the next launches read. The
        copy from the host waits for the stream, so launches at unchanged positions (a benchmark's
        back-to-back steps) skip it."""
        positions = [int(p) for p in positions]
        if len(positions) != self.batch:
            raise AdamkError(f"{len(positions)} positions for a batch of {self.batch} sequences")
        for p in positions:
            self._check_position(p)
        if positions != self._positions_written:
            if self.torch.cuda.is_current_stream_capturing():     # a copy from pageable host memory
                raise AdamkError(f"a CUDA graph capture cannot write a batch's positions {positions} from the "
                                 "host: write them before the capture (set_positions, or one eager step at them)")
            if self._session:
                self._session.set_positions(positions, self.torch.cuda.current_stream(self.device).cuda_stream)
            else:
                self.buffers[self.position_buffer].copy_(self.torch.tensor(positions, dtype=self.torch.int32))
            self._positions_written = positions

    def __call__(self, x, pos):
        """`x` [batch, hidden] (one sequence: any shape of hidden elements) at `pos`, an int, or for a
        batch one position per sequence; returns y, shaped as the artifact's output."""
        self.buffers["x"].copy_(x.reshape(self.buffers["x"].shape))
        self.launch(pos)
        self.check()
        return self.buffers["y"].clone()


def _cpp_session(path, device_index: int, timeout_s: float):
    """The C++ runtime's session of the artifact at `path` (csrc/runtime/session.hpp)."""
    try:
        from .. import _runtime
    except ImportError as e:
        raise AdamkError(f"launcher 'cpp' needs the C++ runtime adamk._runtime, which this install lacks ({e}); "
                         "`pip install .` builds it") from None
    return _runtime.Session(str(path), device_index, timeout_s)


def kernel_arguments(order: list[str], values: dict) -> list:
    """`values` in the order the artifact's kernel takes them (manifest kernel.args, written
    from codegen's KERNEL_PARAMS, the one source of the signature)."""
    if sorted(order) != sorted(values):
        raise AdamkError(f"the artifact's kernel takes arguments {order}; this runtime passes {sorted(values)} "
                         "(an artifact of another adamk version?)")
    return [values[name] for name in order]


def load(path, weights, device=None, timeout_s: float = 2.0, weights_prefix: str = "",
         names_prefix: str = "", launcher: str = "cuda-bindings") -> DecodeStep:
    """A layer's DecodeStep, or a whole model's ModelStep (runtime/model.py), by the manifest.
    `launcher="cpp"`: the C++ runtime (adamk._runtime.Session) owns the launch state and launches."""
    from ..artifact import read_manifest
    from .model import ModelStep
    whole = read_manifest(path).get("model", {}).get("whole_model", False)
    return (ModelStep if whole else DecodeStep)(path, weights, device=device, timeout_s=timeout_s,
                                                 weights_prefix=weights_prefix, names_prefix=names_prefix,
                                                 launcher=launcher)
