// check.cpp — `adamk-runtime-check DIR [--device N]`: open an artifact with the C++ runtime (its
// manifest and every file's sha256 checked) and print what it holds; with --device, also load the
// CUDA driver and name the file GPU N would load. One `error:` line and exit 1 on any problem.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "artifact.hpp"
#include "driver.hpp"

int main(int argc, char** argv) {
  if (argc != 2 && !(argc == 4 && std::strcmp(argv[2], "--device") == 0)) {
    std::fprintf(stderr, "usage: adamk-runtime-check ARTIFACT_DIR [--device N]\n");
    return 2;
  }
  try {
    const adamk::Artifact a = adamk::Artifact::open(argv[1]);
    int64_t bytes = 0;
    for (const adamk::Buffer& b : a.buffers()) bytes += b.bytes();
    const adamk::Kernel& k = a.kernel();
    const std::string batch = a.batch() > 1 ? ", a batch of " + std::to_string(a.batch()) : "";
    std::printf("ok: %s artifact for %s (%s%s): kernel %s, %d blocks x %d threads, %d B shared memory, "
                "%zu buffers (%lld bytes), %zu kernel arguments\n",
                a.whole_model() ? "whole-model" : "layer", adamk::printable(a.gpu()).c_str(), a.arch().c_str(), batch.c_str(),
                adamk::printable(k.name).c_str(),
                k.grid, k.block_threads, k.smem_bytes, a.buffers().size(), static_cast<long long>(bytes),
                k.args.size());
    if (argc == 4) {
      char* end = nullptr;
      const long ordinal = std::strtol(argv[3], &end, 10);
      if (end == argv[3] || *end != '\0' || ordinal < 0 || ordinal > 1024)
        throw adamk::Error("--device " + adamk::quoted(argv[3]) + " is not a GPU ordinal");
      const adamk::Driver& d = adamk::Driver::get();
      std::printf("driver %d: GPU %ld is %s, loads %s\n", d.version(), ordinal, d.device_arch(int(ordinal)).c_str(),
                  d.module_file(a, int(ordinal)).c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
