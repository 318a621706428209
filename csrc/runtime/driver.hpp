// driver.hpp — the CUDA driver, loaded at run time (dlopen of libcuda.so.1): building the runtime
// needs no GPU, no driver and no CUDA toolkit, and a machine without a driver gets one clear error
// when it first needs the GPU, not when the library loads. The few driver types and entry points
// the runtime calls are declared here by their documented ABI (cuda.h's, CUDA 12 and 13).
#pragma once
#include <string>

#include "artifact.hpp"

namespace adamk {

class Driver {
 public:
  // The process's driver, loaded and initialised once; throws Error if there is none.
  static const Driver& get();

  int version() const { return version_; }      // e.g. 13000
  int device_count() const;
  // "sm_<major><minor>" of device `ordinal`.
  std::string device_arch(int ordinal) const;

  // The artifact file device `ordinal` loads: the cubin of its arch, or the PTX (JIT-compiled by
  // the driver) on a newer GPU; an older GPU is refused (adamk/runtime/decode.py, the same rule).
  std::string module_file(const Artifact& artifact, int ordinal) const;

 private:
  Driver();
  void* lib_ = nullptr;
  int version_ = 0;
  int (*init_)(unsigned) = nullptr;
  int (*driver_get_version_)(int*) = nullptr;
  int (*device_get_count_)(int*) = nullptr;
  int (*device_get_)(int*, int) = nullptr;
  int (*device_get_attribute_)(int*, int, int) = nullptr;
  int (*get_error_string_)(int, const char**) = nullptr;
  void check(int result, const char* call) const;
};

}  // namespace adamk
