// artifact.hpp — an adamk artifact directory as the C++ runtime reads it: manifest.json checked
// (its format, the fields the runtime needs with their JSON types, plain file names) and every
// file it lists checked against its sha256, before anything is loaded. The same checks as the
// Python runtime (adamk/artifact.py read_manifest, load_files), with the same wording.
#pragma once
#include <cstdint>
#include <initializer_list>
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
  int64_t element_bytes() const;   // adamk/kinds/base.py DTYPE_BYTES
  int64_t bytes() const;
  bool tagged() const;          // words that carry their epoch (TAGGED_DTYPES): zeroed with the counters
};

// The kernel's parameters this runtime passes (adamk/codegen/cuda.py KERNEL_ARGS; a CPU test compares
// them); a manifest lists each once, in the kernel's order.
constexpr int kKernelArgs = 7;
constexpr const char* kKernelArgNames[kKernelArgs] = {"buffers", "counters", "error_record", "trace", "pos",
                                                      "epochs", "timeout_ns"};

struct Kernel {
  std::string name;             // the entry point
  int grid = 0, block_threads = 0, smem_bytes = 0;
  std::vector<std::string> args;   // the kernel's parameters, in order: kKernelArgNames, each once
  uint32_t max_epoch = 0;       // the last epoch before the state is zeroed (codegen/cuda.py max_epoch)
  int extra_counters = 0;       // counters beyond the schedule's (the work-queue variant's)
  int trace_slots = 0;          // stamps per task of a profiling build (0: not one)
};

struct Counter {
  std::string name;
  int index = 0;
};

// A weight the kernel reads (manifest "weights"): which buffer holds it, at which layer slot.
struct Weight {
  std::string name, buffer;
  std::vector<int64_t> shape;
  int64_t slot = 0;
  std::vector<std::string> aliases;     // other names of a tied weight (an LM head that is the embedding)
};

// How a linear's weights are stored page by page (manifest "packed_weights"; weights.hpp
// pack_pages): `buffer` holds every source's pages, the other sources' buffers name it too.
struct Packing {
  std::string buffer;
  std::vector<std::string> sources;
  int64_t page_rows = 0, page_cols = 0, k_chunk = 0, chunk_pages = 0, col_pages = 0;
  int64_t n = 0, k = 0;                 // the sources' shape
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
  const std::vector<std::string>& tasks() const { return tasks_; }      // by task id
  const std::vector<Counter>& counters() const { return counters_; }
  const std::vector<Weight>& weights() const { return weights_; }
  const std::vector<Packing>& packings() const { return packings_; }
  // The packing buffer `name` belongs to (as its buffer or another source), or nullptr.
  const Packing* packing_of(const std::string& name) const;
  // The bytes buffer `name` takes on the device: its manifest size, or a packed linear's pages.
  int64_t device_bytes(const Buffer& b) const;
  bool whole_model() const { return whole_model_; }
  int layers() const { return layers_; }                 // a whole model's decoder layers (1 otherwise)
  int vocab_size() const { return vocab_size_; }         // a whole model's
  int batch() const { return batch_; }                   // sequences decoded per step (config batch_size)
  // The bytes of a listed file (checked): the cubin for the artifact's arch, say.
  std::string file(const std::string& name) const;

 private:
  static void read_weights(Artifact& a, const json::Value& m, const std::string& path);
  std::string dir_, arch_, gpu_;
  json::Value manifest_;
  Kernel kernel_;
  std::vector<Buffer> buffers_;
  std::vector<std::string> tasks_;
  std::vector<Counter> counters_;
  std::vector<Weight> weights_;
  std::vector<Packing> packings_;
  bool whole_model_ = false;
  int layers_ = 1, vocab_size_ = 0, batch_ = 1;
};

// Sizes from untrusted files are multiplied through this: a product over kMaxBytes (1 TB) or one
// that overflows is an Error naming `what`.
constexpr int64_t kMaxBytes = int64_t(1) << 40;
int64_t checked_product(std::initializer_list<int64_t> factors, const std::string& what);

// `name` as a terminal line shows a model-derived string: non-printable bytes escaped, cut at 120
// characters (adamk/names.py printable); quoted() puts it in quotes, as an error message names it
// (adamk/names.py quoted).
std::string printable(const std::string& name);
std::string quoted(const std::string& name);

}  // namespace adamk
