// driver.cpp — the CUDA driver through dlopen (driver.hpp).
#include "driver.hpp"

#include <dlfcn.h>

namespace adamk {

namespace {
constexpr int kComputeCapabilityMajor = 75;   // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
constexpr int kComputeCapabilityMinor = 76;   // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
constexpr int kNoDevice = 100;                // CUDA_ERROR_NO_DEVICE
}  // namespace

const Driver& Driver::get() {
  static const Driver driver;      // thread-safe initialisation; a failed one throws again next call
  return driver;
}

Driver::Driver() {
  lib_ = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib_) {
    const char* why = dlerror();
    throw Error(std::string("cannot load the CUDA driver (libcuda.so.1): ") + (why ? why : "not found") +
                "; the adamk runtime needs an NVIDIA GPU and its driver");
  }
  auto symbol = [&](const char* name) {
    void* p = dlsym(lib_, name);
    if (!p) throw Error(std::string("the CUDA driver lacks ") + name + ": it is older than CUDA 12");
    return p;
  };
  init_ = reinterpret_cast<int (*)(unsigned)>(symbol("cuInit"));
  driver_get_version_ = reinterpret_cast<int (*)(int*)>(symbol("cuDriverGetVersion"));
  device_get_count_ = reinterpret_cast<int (*)(int*)>(symbol("cuDeviceGetCount"));
  device_get_ = reinterpret_cast<int (*)(int*, int)>(symbol("cuDeviceGet"));
  device_get_attribute_ = reinterpret_cast<int (*)(int*, int, int)>(symbol("cuDeviceGetAttribute"));
  get_error_string_ = reinterpret_cast<int (*)(int, const char**)>(symbol("cuGetErrorString"));
  const int r = init_(0);
  if (r == kNoDevice) throw Error("the CUDA driver finds no GPU on this machine (cuInit: CUDA_ERROR_NO_DEVICE)");
  check(r, "cuInit");
  check(driver_get_version_(&version_), "cuDriverGetVersion");
}

void Driver::check(int result, const char* call) const {
  if (result == 0) return;
  const char* text = nullptr;
  if (get_error_string_) get_error_string_(result, &text);
  throw Error(std::string(call) + " failed: " + (text ? text : "CUDA error " + std::to_string(result)));
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

std::string Driver::module_file(const Artifact& artifact, int ordinal) const {
  const std::string arch = device_arch(ordinal);
  auto number = [](const std::string& a) { return std::stoi(a.substr(3)); };
  const int want = number(artifact.arch()), have = number(arch);
  if (have == want) return "kernel." + arch + ".cubin";
  if (have > want) return "kernel.ptx";
  throw Error("artifact targets " + artifact.arch() + "; this GPU is " + arch);
}

}  // namespace adamk
