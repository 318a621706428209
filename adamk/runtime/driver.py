"""Thin helpers over cuda-bindings' driver API: checked calls, module load, cooperative launch."""
from __future__ import annotations

import ctypes

from ..errors import AdamkError


def _driver():
    from cuda.bindings import driver
    return driver


def check(result, what: str):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        driver = _driver()
        _, name = driver.cuGetErrorName(err)
        raise AdamkError(f"CUDA {what} failed: {name.decode() if name else err}")
    return rest[0] if len(rest) == 1 else rest


def ensure_context(device_index: int):
    """Make the primary context of `device_index` (the one torch uses) current on this thread."""
    driver = _driver()
    check(driver.cuInit(0), "cuInit")
    ctx = check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if int(ctx) == 0:
        dev = check(driver.cuDeviceGet(device_index), "cuDeviceGet")
        ctx = check(driver.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        check(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")


def load_function(image: bytes, name: str):
    driver = _driver()
    module = check(driver.cuModuleLoadData(image), "cuModuleLoadData (loading the kernel image)")
    return module, check(driver.cuModuleGetFunction(module, name.encode()), "cuModuleGetFunction")


def set_dynamic_smem(fn, nbytes: int):
    driver = _driver()
    check(driver.cuFuncSetAttribute(
        fn, driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, nbytes),
        f"setting {nbytes} B of dynamic shared memory")


def function_attribute(fn, name: str) -> int:
    """A CU_FUNC_ATTRIBUTE_<name> of a loaded kernel, e.g. SHARED_SIZE_BYTES (its static shared memory)."""
    driver = _driver()
    return check(driver.cuFuncGetAttribute(getattr(driver.CUfunction_attribute, f"CU_FUNC_ATTRIBUTE_{name}"), fn),
                 f"reading the kernel's {name}")


def max_blocks_per_sm(fn, threads: int, smem: int) -> int:
    return check(_driver().cuOccupancyMaxActiveBlocksPerMultiprocessor(fn, threads, smem), "occupancy query")


def sm_count(device_index: int) -> int:
    driver = _driver()
    dev = check(driver.cuDeviceGet(device_index), "cuDeviceGet")
    return check(driver.cuDeviceGetAttribute(
        driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev), "SM count")


class KernelArgs:
    """ctypes storage for the kernel's arguments, kept alive across the launch."""

    def __init__(self, *values):
        self.values = list(values)
        self.array = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])

    @property
    def pointer(self) -> int:
        return ctypes.addressof(self.array)


class CooperativeLaunch:
    """A cooperative launch of one kernel's grid, its configuration built once: all blocks are
    co-resident or the launch fails. Made through cuLaunchKernelEx with the cooperative launch
    attribute (not cuLaunchCooperativeKernel), so a CUDA graph capture records it as well."""

    def __init__(self, fn, grid: int, threads: int):
        driver = _driver()
        self.fn = fn
        attr = driver.CUlaunchAttribute()
        attr.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_COOPERATIVE
        attr.value.cooperative = 1
        self.config = driver.CUlaunchConfig()
        self.config.gridDimX, self.config.gridDimY, self.config.gridDimZ = grid, 1, 1
        self.config.blockDimX, self.config.blockDimY, self.config.blockDimZ = threads, 1, 1
        self.config.attrs = [attr]
        self.config.numAttrs = 1

    def __call__(self, stream: int, args: KernelArgs, smem: int):
        driver = _driver()
        self.config.hStream = driver.CUstream(stream)
        self.config.sharedMemBytes = smem
        check(driver.cuLaunchKernelEx(self.config, self.fn, args.pointer, 0), "cooperative launch of the megakernel")
