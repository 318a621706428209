"""Compile generated CUDA C++ in-process with NVRTC: sm_XX cubin (with the ptxas report) and PTX.

The device library includes no CUDA headers, so NVRTC needs no include paths. We pin
NVRTC 13.0: it writes PTX ISA 9.0, which a CUDA 13.0 driver loads (newer NVRTC writes a
newer ISA that such drivers refuse).
"""
from __future__ import annotations

import dataclasses
import re
import struct

from ..errors import ToolchainError

MAX_PTX_ISA = (9, 0)
# No -lineinfo: it records the working directory, so the same input compiled from another
# directory would give other bytes. Recompile the artifact's kernel.cu with it to profile lines.
# --no-cache: NVRTC (12.9+) may answer a compile from its on-disk cache without running
# ptxas, so without the `ptxas -v` report the compiler checks and ptxas.log keeps (and the
# artifact would differ by whether the cache was warm). Its key is not the source alone, so
# no change to the source reliably misses it.
OPTIONS = ["-std=c++17", "--extra-device-vectorization", "--no-cache"]


@dataclasses.dataclass(frozen=True)
class Binaries:
    cubin: bytes
    ptx: str
    ptxas_log: str
    nvrtc_version: tuple[int, int]

    @property
    def report(self) -> dict:
        return parse_ptxas_log(self.ptxas_log)


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:   # pragma: no cover - a broken install
        raise ToolchainError("cuda-bindings is not installed; `pip install cuda-bindings nvidia-cuda-nvrtc`") from e
    return nvrtc


def _check(result, what):
    err = result[0]
    if int(err) != 0:
        raise ToolchainError(f"NVRTC {what} failed: {err}")
    return result[1:] if len(result) > 2 else (result[1] if len(result) == 2 else None)


def _compile(source: str, name: str, options: list[str]) -> tuple[object, str]:
    nvrtc = _nvrtc()
    prog = _check(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []), "create")
    opts = [o.encode() for o in options]
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
    log = bytearray(size)       # NVRTC writes into it: never an (interned, immutable) bytes object
    nvrtc.nvrtcGetProgramLog(prog, log)
    log = bytes(log).rstrip(b"\x00 ").decode(errors="replace")
    if int(err) != 0:
        first = next((line for line in log.splitlines() if "error" in line), log.splitlines()[0] if log else "")
        raise ToolchainError(f"NVRTC could not compile {name}: {first.strip()} (full log: save the artifact's "
                             f"kernel.cu and run `nvcc -arch=sm_89 -std=c++17 -c {name}`)")
    return prog, log


def nvrtc_version() -> tuple[int, int]:
    return tuple(_check(_nvrtc().nvrtcVersion(), "version"))


def compile_cuda(source: str, arch: int, name: str = "kernel.cu") -> Binaries:
    nvrtc = _nvrtc()
    # One compile for a real arch yields both the cubin and the PTX it was assembled from.
    options = OPTIONS + [f"--gpu-architecture=sm_{arch}", "--ptxas-options=-v"]
    prog, log = _compile(source, name, options)
    if "Compiling entry function" not in log:
        nvrtc.nvrtcDestroyProgram(prog)
        raise ToolchainError(f"NVRTC {nvrtc_version()} returned no `ptxas -v` report for {name} although it was "
                             "given --no-cache")
    size = _check(nvrtc.nvrtcGetCUBINSize(prog), "cubin size")
    cubin = bytearray(size)     # NVRTC writes into these buffers
    nvrtc.nvrtcGetCUBIN(prog, cubin)
    size = _check(nvrtc.nvrtcGetPTXSize(prog), "PTX size")
    ptx = bytearray(size)
    nvrtc.nvrtcGetPTX(prog, ptx)
    nvrtc.nvrtcDestroyProgram(prog)
    ptx = bytes(ptx).rstrip(b"\x00").decode()
    isa = ptx_isa(ptx)
    if isa > MAX_PTX_ISA:
        raise ToolchainError(f"NVRTC {nvrtc_version()} wrote PTX ISA {isa[0]}.{isa[1]}; a CUDA 13.0 driver loads at most "
                             f"{MAX_PTX_ISA[0]}.{MAX_PTX_ISA[1]}: install nvidia-cuda-nvrtc==13.0.*")
    # ptxas prints its wall time; drop it so the same input gives the same artifact bytes
    log = "\n".join(line for line in log.splitlines() if "Compile time =" not in line)
    return Binaries(bytes(cubin), ptx, log.strip() + "\n", nvrtc_version())


def ptx_isa(ptx: str) -> tuple[int, int]:
    m = re.search(r"^\.version (\d+)\.(\d+)", ptx, re.M)
    if not m:
        raise ToolchainError("PTX has no .version line")
    return int(m.group(1)), int(m.group(2))


def parse_ptxas_log(log: str, kernel: str = "adamk_decode_step") -> dict:
    """Registers, spills and static shared memory of `kernel` from a `ptxas -v` report."""
    report = {"registers": None, "spill_stores": 0, "spill_loads": 0, "static_smem": 0, "stack_frame": 0}
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "Compiling entry function" in line and kernel in line:
            end = next((j for j in range(i + 1, len(lines)) if "Compiling entry function" in lines[j]), len(lines))
            own = False
            for info in lines[i + 1:end]:
                if "Function properties for" in info:     # callees report their own frames in between
                    own = info.rstrip().endswith(kernel)
                    continue
                if not own and "Used" not in info:
                    continue
                if m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", info):
                    report["stack_frame"], report["spill_stores"], report["spill_loads"] = map(int, m.groups())
                if m := re.search(r"Used (\d+) registers", info):
                    report["registers"] = int(m.group(1))
                if m := re.search(r"(\d+) bytes smem", info):
                    report["static_smem"] = int(m.group(1))
    # spills anywhere (callee task bodies are separate functions) count too
    report["spill_stores_total"] = sum(int(x) for x in re.findall(r"(\d+) bytes spill stores", log))
    report["spill_loads_total"] = sum(int(x) for x in re.findall(r"(\d+) bytes spill loads", log))
    return report


EIATTR_REGCOUNT = 0x2F   # a .nv.info attribute: (symbol index, registers) of one function


def cubin_registers(cubin: bytes, kernel: str = "adamk_decode_step") -> int:
    """Registers per thread of `kernel` read from the cubin itself, to check the ptxas report
    by: the cubin is an ELF64 file whose `.nv.info` section holds attribute records (format
    byte, attribute byte, u16 size, value); REGCOUNT's value is (symbol index, count)."""
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2:
        raise ToolchainError("the cubin is not an ELF64 file")
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * shentsize) for i in range(shnum)]

    def string(table, at):
        start = sections[table][4] + at
        return cubin[start:cubin.index(b"\0", start)].decode()

    named = {string(shstrndx, sec[0]): sec for sec in sections}
    symtab = named[".symtab"]
    symbols = [struct.unpack_from("<IBBHQQ", cubin, symtab[4] + i * 24)[0] for i in range(symtab[5] // 24)]
    info = named.get(".nv.info")
    at, end = (info[4], info[4] + info[5]) if info else (0, 0)
    while at + 4 <= end:
        fmt, attr, size = struct.unpack_from("<BBH", cubin, at)
        if fmt == 0x04 and attr == EIATTR_REGCOUNT:
            symbol, count = struct.unpack_from("<II", cubin, at + 4)
            if string(symtab[6], symbols[symbol]) == kernel:
                return count
        at += 4 + (size if fmt == 0x04 else 0)         # EIFMT_SVAL carries `size` bytes; others none
    raise ToolchainError(f"the cubin records no register count for {kernel}")
