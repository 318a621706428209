"""The time between back-to-back launches that no kernel of ours can shorten: a kernel launched
exactly as the megakernel is (one block of `--threads` per SM, `--smem` bytes of dynamic shared
memory, the cooperative attribute, cuLaunchKernelEx) whose every block spins on the global timer
for T us and exits. Back to back (runtime/timing.py: median over blocks of 10 launches), each
launch costs T + the gap; the gap is the launch-to-launch overhead a step of the megakernel pays
beyond its traced makespan (the profiles' `launch_us` holds both that and the kernel's own ramp).

    python benchmarks/launch_gap.py [--smem 229984] [--threads 288] [--spin 0,10,40] [--iters 200]

Prints each T's b2b time and gap, cooperative and not (docs/perf.md v70), and with programmatic
dependent launch (sm_90: each launch may start once every block of the one before has run
`griddepcontrol.launch_dependents`, at its start here; its blocks then wait in `griddepcontrol.wait`
for that grid to finish), alone and with the cooperative attribute (docs/perf.md v72).
"""
from __future__ import annotations

import argparse
import ctypes

import torch

from adamk.codegen.nvrtc import compile_cuda
from adamk.runtime import driver as cu
from adamk.runtime.timing import time_launches

SOURCE = r"""
extern "C" __global__ void spin(unsigned long long ns, int* sink, int pdl) {
  extern __shared__ int smem[];
  unsigned long long t0, t;
#if __CUDA_ARCH__ >= 900
  if (pdl) {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
  }
#endif
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
  if (ns == 1ull && threadIdx.x == 0) sink[blockIdx.x] = smem[0];   // never: keeps smem declared
}
"""


class PlainLaunch(cu.CooperativeLaunch):
    """The same launch without the cooperative attribute."""

    def __init__(self, fn, grid: int, threads: int):
        super().__init__(fn, grid, threads)
        self.config.attrs = []
        self.config.numAttrs = 0


def with_pdl(launch: cu.CooperativeLaunch) -> cu.CooperativeLaunch:
    """`launch` with the programmatic stream serialization attribute added."""
    driver = cu._driver()
    attr = driver.CUlaunchAttribute()
    attr.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
    attr.value.programmaticStreamSerializationAllowed = 1
    launch.config.attrs = [*launch.config.attrs, attr]
    launch.config.numAttrs = len(launch.config.attrs)
    return launch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smem", type=int, default=229984, help="dynamic shared memory a block (the 1B layer's H200 kernel)")
    ap.add_argument("--threads", type=int, default=288)
    ap.add_argument("--spin", default="0,10,40", help="spin times in us, comma-separated")
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args()
    torch.cuda.init()
    dev = torch.cuda.current_device()
    cu.ensure_context(dev)
    major, minor = torch.cuda.get_device_capability(dev)
    binaries = compile_cuda(SOURCE, 10 * major + minor, "launch_gap.cu")
    _, fn = cu.load_function(binaries.cubin, "spin")
    cu.set_dynamic_smem(fn, args.smem)
    sms = cu.sm_count(dev)
    if cu.max_blocks_per_sm(fn, args.threads, args.smem) < 1:
        raise SystemExit(f"a block of {args.threads} threads with {args.smem} B of shared memory does not fit an SM")
    sink = torch.zeros(sms, dtype=torch.int32, device="cuda")
    print(f"{torch.cuda.get_device_name()}: {sms} blocks x {args.threads} threads, {args.smem} B dynamic smem")
    print(f"{'launch':12s} {'spin us':>8s} {'b2b us':>8s} {'gap us':>8s} {'single us':>10s}")
    launches = [("cooperative", cu.CooperativeLaunch(fn, sms, args.threads), 0),
                ("plain", PlainLaunch(fn, sms, args.threads), 0)]
    if major >= 9:
        launches += [("pdl", with_pdl(PlainLaunch(fn, sms, args.threads)), 1),
                     ("coop+pdl", with_pdl(cu.CooperativeLaunch(fn, sms, args.threads)), 1)]
    for name, launcher, pdl in launches:
        for spin_us in (float(v) for v in args.spin.split(",")):
            kargs = cu.KernelArgs(ctypes.c_uint64(int(spin_us * 1000)), ctypes.c_uint64(sink.data_ptr()),
                                  ctypes.c_int32(pdl))
            stream = torch.cuda.current_stream().cuda_stream
            single, b2b = time_launches(lambda: launcher(stream, kargs, args.smem), args.iters)
            print(f"{name:12s} {spin_us:8.1f} {b2b:8.2f} {b2b - spin_us:8.2f} {single:10.2f}")


if __name__ == "__main__":
    main()
