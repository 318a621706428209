// artifact.hpp — an adamk artifact directory as the C++ runtime reads it: manifest.json checked
// (its format, the fields the runtime needs with their JSON types, plain file names) and every
// file it lists checked against its sha256, before anything is loaded. The same checks as the
// Python runtime (adamk/artifact.py read_manifest, load_files), with the same wording.
#pragma once
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "json.hpp"

#ifndef ADAMK_MANIFEST_FORMAT
#error "ADAMK_MANIFEST_FORMAT comes from adamk/artifact.py MANIFEST_FORMAT (CMakeLists.txt reads it)"
#endif

namespace adamk {

constexpr int kManifestFormat = ADAMK_MANIFEST_FORMAT;
constexpr uint64_t kMaxManifestBytes = 16u << 20;     // adamk/artifact.py MAX_MANIFEST_BYTES

// A problem with an artifact (or the machine it is run on): one line naming it.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A device buffer the kernel takes, in the kernel's order (manifest "buffers").
struct Buffer {
  std::string name, role, dtype;
  std::vector<int64_t> shape;
  int64_t slots = 1;            // a layer-indexed buffer's layers (1 otherwise)
  int64_t elements() const;     // all slots
  int64_t bytes() const;
};

struct Kernel {
  std::string name;             // the entry point
  int grid = 0, block_threads = 0, smem_bytes = 0;
  std::vector<std::string> args;   // the kernel's parameters, in order (adamk/codegen/cuda.py KERNEL_ARGS)
};

class Artifact {
 public:
  // Reads and checks the artifact in `dir`; throws Error naming the first problem.
  static Artifact open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const json::Value& manifest() const { return manifest_; }
  const std::string& arch() const { return arch_; }          // "sm_89", "sm_90"
  const std::string& gpu() const { return gpu_; }
  const Kernel& kernel() const { return kernel_; }
  const std::vector<Buffer>& buffers() const { return buffers_; }
  bool whole_model() const { return whole_model_; }
  // The bytes of a listed file (checked): the cubin for the artifact's arch, say.
  std::string file(const std::string& name) const;

 private:
  std::string dir_, arch_, gpu_;
  json::Value manifest_;
  Kernel kernel_;
  std::vector<Buffer> buffers_;
  bool whole_model_ = false;
};

// `name` as an error message shows a model-derived string: quoted, non-printable bytes escaped,
// cut at 120 characters (adamk/names.py quoted).
std::string quoted(const std::string& name);

}  // namespace adamk
