// driver.cpp — the CUDA driver through dlopen (driver.hpp).
#include "driver.hpp"

#include <dlfcn.h>

namespace adamk {

namespace {
// cuda.h's enumerators and structures the runtime uses, by value (the driver's ABI).
constexpr int kComputeCapabilityMajor = 75;   // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
constexpr int kComputeCapabilityMinor = 76;   // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
constexpr int kMultiprocessorCount = 16;      // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
constexpr int kMaxDynamicSharedBytes = 8;     // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
constexpr int kNoDevice = 100;                // CUDA_ERROR_NO_DEVICE
constexpr int kLaunchAttributeCooperative = 2;   // CU_LAUNCH_ATTRIBUTE_COOPERATIVE

struct alignas(8) LaunchAttribute {   // CUlaunchAttribute: an id, padding to 8 bytes, a 64-byte value union
  int id;
  char pad[4];
  union {
    char bytes[64];
    int cooperative;
  } value;
};
static_assert(sizeof(LaunchAttribute) == 72, "CUlaunchAttribute is 72 bytes");

struct LaunchConfig {           // CUlaunchConfig
  unsigned grid_x, grid_y, grid_z;
  unsigned block_x, block_y, block_z;
  unsigned shared_bytes;
  CUstream stream;
  LaunchAttribute* attrs;
  unsigned num_attrs;
};
}  // namespace

const Driver& Driver::get() {
  static const Driver driver;      // thread-safe initialisation; a failed one throws again next call
  return driver;
}

template <typename F>
void Driver::bind(F& f, const char* name) {
  void* p = dlsym(lib_, name);
  if (!p) throw Error(std::string("the CUDA driver lacks ") + name + ": it is older than CUDA 12");
  f = reinterpret_cast<F>(p);
}

Driver::Driver() {
  lib_ = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib_) {
    const char* why = dlerror();
    throw Error(std::string("cannot load the CUDA driver (libcuda.so.1): ") + (why ? why : "not found") +
                "; the adamk runtime needs an NVIDIA GPU and its driver");
  }
  bind(init_, "cuInit");
  bind(driver_get_version_, "cuDriverGetVersion");
  bind(device_get_count_, "cuDeviceGetCount");
  bind(device_get_, "cuDeviceGet");
  bind(device_get_attribute_, "cuDeviceGetAttribute");
  bind(get_error_name_, "cuGetErrorName");
  bind(primary_retain_, "cuDevicePrimaryCtxRetain");
  bind(primary_release_, "cuDevicePrimaryCtxRelease_v2");
  bind(ctx_push_current_, "cuCtxPushCurrent_v2");
  bind(ctx_pop_current_, "cuCtxPopCurrent_v2");
  bind(ctx_synchronize_, "cuCtxSynchronize");
  bind(module_load_data_, "cuModuleLoadData");
  bind(module_unload_, "cuModuleUnload");
  bind(module_get_function_, "cuModuleGetFunction");
  bind(func_set_attribute_, "cuFuncSetAttribute");
  bind(occupancy_, "cuOccupancyMaxActiveBlocksPerMultiprocessor");
  bind(mem_alloc_, "cuMemAlloc_v2");
  bind(mem_free_, "cuMemFree_v2");
  bind(memcpy_htod_async_, "cuMemcpyHtoDAsync_v2");
  bind(memcpy_dtoh_async_, "cuMemcpyDtoHAsync_v2");
  bind(memset_d32_async_, "cuMemsetD32Async");
  bind(memset_d16_async_, "cuMemsetD16Async");
  bind(stream_synchronize_, "cuStreamSynchronize");
  bind(launch_kernel_ex_, "cuLaunchKernelEx");
  const int r = init_(0);
  if (r == kNoDevice) throw Error("the CUDA driver finds no GPU on this machine (cuInit: CUDA_ERROR_NO_DEVICE)");
  check(r, "cuInit");
  check(driver_get_version_(&version_), "cuDriverGetVersion");
}

// The wording of adamk/runtime/driver.py check: "CUDA <what> failed: <error name>".
void Driver::check(int result, const char* call) const {
  if (result == 0) return;
  const char* name = nullptr;
  if (get_error_name_) get_error_name_(result, &name);
  throw Error(std::string("CUDA ") + call + " failed: " + (name ? name : std::to_string(result)));
}

int Driver::device_count() const {
  int n = 0;
  check(device_get_count_(&n), "cuDeviceGetCount");
  return n;
}

std::string Driver::device_arch(int ordinal) const {
  const int n = device_count();
  if (ordinal < 0 || ordinal >= n)
    throw Error("no GPU " + std::to_string(ordinal) + ": this machine has " + std::to_string(n));
  int dev = 0, major = 0, minor = 0;
  check(device_get_(&dev, ordinal), "cuDeviceGet");
  check(device_get_attribute_(&major, kComputeCapabilityMajor, dev), "cuDeviceGetAttribute");
  check(device_get_attribute_(&minor, kComputeCapabilityMinor, dev), "cuDeviceGetAttribute");
  return "sm_" + std::to_string(major) + std::to_string(minor);
}

int Driver::sm_count(int ordinal) const {
  int dev = 0, n = 0;
  check(device_get_(&dev, ordinal), "cuDeviceGet");
  check(device_get_attribute_(&n, kMultiprocessorCount, dev), "SM count");
  return n;
}

std::string Driver::module_file(const Artifact& artifact, int ordinal) const {
  const std::string arch = device_arch(ordinal);
  auto number = [](const std::string& a) { return std::stoi(a.substr(3)); };
  const int want = number(artifact.arch()), have = number(arch);
  if (have == want) return "kernel." + arch + ".cubin";
  if (have > want) return "kernel.ptx";
  throw Error("artifact targets " + artifact.arch() + "; this GPU is " + arch);
}

CUcontext Driver::retain_primary(int ordinal) const {
  device_arch(ordinal);          // a clear error for a GPU the machine does not have
  int dev = 0;
  CUcontext ctx = nullptr;
  check(device_get_(&dev, ordinal), "cuDeviceGet");
  check(primary_retain_(&ctx, dev), "cuDevicePrimaryCtxRetain");
  return ctx;
}

void Driver::release_primary(int ordinal) const {
  int dev = 0;
  if (device_get_(&dev, ordinal) == 0) primary_release_(dev);
}

void Driver::push_current(CUcontext ctx) const { check(ctx_push_current_(ctx), "cuCtxPushCurrent"); }

void Driver::pop_current() const {
  CUcontext ctx = nullptr;
  ctx_pop_current_(&ctx);
}

CUmodule Driver::load_module(const std::string& image) const {
  CUmodule m = nullptr;
  check(module_load_data_(&m, image.data()), "cuModuleLoadData (loading the kernel image)");
  return m;
}

void Driver::unload_module(CUmodule m) const { module_unload_(m); }

CUfunction Driver::function(CUmodule m, const std::string& name) const {
  CUfunction f = nullptr;
  check(module_get_function_(&f, m, name.c_str()), "cuModuleGetFunction");
  return f;
}

void Driver::set_dynamic_smem(CUfunction f, int bytes) const {
  const std::string what = "setting " + std::to_string(bytes) + " B of dynamic shared memory";
  check(func_set_attribute_(f, kMaxDynamicSharedBytes, bytes), what.c_str());
}

int Driver::max_blocks_per_sm(CUfunction f, int threads, int smem) const {
  int n = 0;
  check(occupancy_(&n, f, threads, size_t(smem)), "occupancy query");
  return n;
}

CUdeviceptr Driver::alloc(size_t bytes) const {
  CUdeviceptr p = 0;
  const std::string what = "cuMemAlloc of " + std::to_string(bytes) + " B";
  check(mem_alloc_(&p, bytes ? bytes : 1), what.c_str());
  return p;
}

void Driver::free(CUdeviceptr p) const {
  if (p) mem_free_(p);
}

void Driver::copy_to_device(CUdeviceptr dst, const void* src, size_t bytes, CUstream s) const {
  check(memcpy_htod_async_(dst, src, bytes, s), "cuMemcpyHtoDAsync");
}

void Driver::copy_to_host(void* dst, CUdeviceptr src, size_t bytes, CUstream s) const {
  check(memcpy_dtoh_async_(dst, src, bytes, s), "cuMemcpyDtoHAsync");
}

void Driver::fill32(CUdeviceptr dst, uint32_t value, size_t words, CUstream s) const {
  check(memset_d32_async_(dst, value, words, s), "cuMemsetD32Async");
}

void Driver::fill16(CUdeviceptr dst, uint16_t value, size_t halves, CUstream s) const {
  check(memset_d16_async_(dst, value, halves, s), "cuMemsetD16Async");
}

void Driver::synchronize(CUstream s) const { check(stream_synchronize_(s), "cuStreamSynchronize"); }

void Driver::synchronize_context() const { check(ctx_synchronize_(), "cuCtxSynchronize"); }

void Driver::launch_cooperative(CUfunction f, int grid, int threads, int smem, CUstream s, void** args) const {
  LaunchAttribute attr{};
  attr.id = kLaunchAttributeCooperative;
  attr.value.cooperative = 1;
  LaunchConfig config{unsigned(grid), 1, 1, unsigned(threads), 1, 1, unsigned(smem), s, &attr, 1};
  check(launch_kernel_ex_(&config, f, args, nullptr), "cooperative launch of the megakernel");
}

}  // namespace adamk
