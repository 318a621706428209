// driver.hpp — the CUDA driver, loaded at run time (dlopen of libcuda.so.1): building the runtime
// needs no GPU, no driver and no CUDA toolkit, and a machine without a driver gets one clear error
// when it first needs the GPU, not when the library loads. The few driver types and entry points
// the runtime calls are declared here by their documented ABI (cuda.h's, CUDA 12 and 13).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "artifact.hpp"

namespace adamk {

// cuda.h's handles: opaque pointers (CUdeviceptr is an integer of pointer width).
using CUcontext = struct CUctx_st*;
using CUmodule = struct CUmod_st*;
using CUfunction = struct CUfunc_st*;
using CUstream = struct CUstream_st*;
using CUdeviceptr = unsigned long long;

class Driver {
 public:
  // The process's driver, loaded and initialised once; throws Error if there is none.
  static const Driver& get();

  int version() const { return version_; }      // e.g. 13000
  int device_count() const;
  // "sm_<major><minor>" of device `ordinal`.
  std::string device_arch(int ordinal) const;
  int sm_count(int ordinal) const;

  // The artifact file device `ordinal` loads: the cubin of its arch, or the PTX (JIT-compiled by
  // the driver) on a newer GPU; an older GPU is refused (adamk/runtime/decode.py, the same rule).
  std::string module_file(const Artifact& artifact, int ordinal) const;

  // Device `ordinal`'s primary context (the one PyTorch uses), retained; release_primary undoes
  // the retain.
  CUcontext retain_primary(int ordinal) const;
  void release_primary(int ordinal) const;
  void push_current(CUcontext ctx) const;      // ctx current on this thread until pop_current
  void pop_current() const;

  // `image`: a cubin, or PTX with its terminating NUL.
  CUmodule load_module(const std::string& image) const;
  void unload_module(CUmodule m) const;
  CUfunction function(CUmodule m, const std::string& name) const;
  void set_dynamic_smem(CUfunction f, int bytes) const;
  int max_blocks_per_sm(CUfunction f, int threads, int smem) const;

  CUdeviceptr alloc(size_t bytes) const;
  void free(CUdeviceptr p) const;
  // Stream-ordered copies and fills (the stream may be null: the legacy default stream).
  void copy_to_device(CUdeviceptr dst, const void* src, size_t bytes, CUstream s) const;
  void copy_to_host(void* dst, CUdeviceptr src, size_t bytes, CUstream s) const;
  void fill32(CUdeviceptr dst, uint32_t value, size_t words, CUstream s) const;
  void fill16(CUdeviceptr dst, uint16_t value, size_t halves, CUstream s) const;
  void synchronize(CUstream s) const;
  void synchronize_context() const;

  // A cooperative launch of `f` (every block co-resident, or the launch fails) through
  // cuLaunchKernelEx and its launch attribute, so a CUDA graph capture records it as well.
  void launch_cooperative(CUfunction f, int grid, int threads, int smem, CUstream s, void** args) const;

 private:
  Driver();
  void check(int result, const char* call) const;
  template <typename F>
  void bind(F& f, const char* name);

  void* lib_ = nullptr;
  int version_ = 0;
  int (*init_)(unsigned) = nullptr;
  int (*driver_get_version_)(int*) = nullptr;
  int (*device_get_count_)(int*) = nullptr;
  int (*device_get_)(int*, int) = nullptr;
  int (*device_get_attribute_)(int*, int, int) = nullptr;
  int (*get_error_name_)(int, const char**) = nullptr;
  int (*primary_retain_)(CUcontext*, int) = nullptr;
  int (*primary_release_)(int) = nullptr;
  int (*ctx_push_current_)(CUcontext) = nullptr;
  int (*ctx_pop_current_)(CUcontext*) = nullptr;
  int (*ctx_synchronize_)() = nullptr;
  int (*module_load_data_)(CUmodule*, const void*) = nullptr;
  int (*module_unload_)(CUmodule) = nullptr;
  int (*module_get_function_)(CUfunction*, CUmodule, const char*) = nullptr;
  int (*func_set_attribute_)(CUfunction, int, int) = nullptr;
  int (*occupancy_)(int*, CUfunction, int, size_t) = nullptr;
  int (*mem_alloc_)(CUdeviceptr*, size_t) = nullptr;
  int (*mem_free_)(CUdeviceptr) = nullptr;
  int (*memcpy_htod_async_)(CUdeviceptr, const void*, size_t, CUstream) = nullptr;
  int (*memcpy_dtoh_async_)(void*, CUdeviceptr, size_t, CUstream) = nullptr;
  int (*memset_d32_async_)(CUdeviceptr, unsigned, size_t, CUstream) = nullptr;
  int (*memset_d16_async_)(CUdeviceptr, unsigned short, size_t, CUstream) = nullptr;
  int (*stream_synchronize_)(CUstream) = nullptr;
  int (*launch_kernel_ex_)(const void*, CUfunction, void**, void**) = nullptr;
};

}  // namespace adamk
