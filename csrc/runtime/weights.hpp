// weights.hpp — weights for a Session from Hugging Face safetensors, with the Python runtime's
// rules (adamk/runtime/weights.py): a `model.safetensors` file, or a checkpoint directory holding
// it or a sharded one (`model.safetensors.index.json` and its shards, named by plain file names
// beside it; symbolic links to regular files are followed, as in a Hugging Face cache snapshot).
// Every weight the manifest lists is found (under its name or a tied alias), checked (shape,
// float32 or bfloat16, finite), converted to the storage dtype, stacked by layer slot, packed
// page by page where the manifest's packed_weights says so, and uploaded.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "session.hpp"

namespace adamk {

// One tensor of a safetensors file: where its bytes are in the mapped file.
struct TensorView {
  std::string dtype;                 // "BF16", "F32", ... (the safetensors names)
  std::vector<int64_t> shape;
  const unsigned char* data = nullptr;
  uint64_t bytes = 0;
};

// The tensors of a checkpoint by name, the files mapped read-only while it lives.
class Checkpoint {
 public:
  static Checkpoint open(const std::string& path);     // a .safetensors file or a checkpoint directory
  Checkpoint() = default;
  Checkpoint(Checkpoint&& other) noexcept { *this = std::move(other); }
  Checkpoint& operator=(Checkpoint&& other) noexcept;       // unmaps what this one held
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;
  ~Checkpoint();
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorView& at(const std::string& name) const;
  size_t size() const { return tensors_.size(); }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }

 private:
  void map_file(const std::string& path, const std::map<std::string, bool>* wanted);
  void unmap() noexcept;
  struct Mapping {
    void* base;
    size_t length;
  };
  std::vector<Mapping> mappings_;
  std::map<std::string, TensorView> tensors_;
};

// A linear's weights page by page, as the device streams them (adamk/runtime/weights.py
// pack_pages, the same layout): `sources` are [n, k] row-major bf16 words of one shape.
std::vector<uint16_t> pack_pages(const std::vector<const uint16_t*>& sources, int64_t n, int64_t k,
                                 int64_t page_rows, int64_t page_cols, int64_t k_chunk, int64_t chunk_pages);

// Every weight the artifact lists, from the checkpoint, in bf16 words: the first missing, mistyped,
// misshapen or non-finite one is one Error in adamk/runtime/weights.py check_weights's words.
std::map<std::string, std::vector<uint16_t>> weight_words(const Artifact& artifact, const Checkpoint& ckpt);

// Checks and uploads every weight the session's manifest lists from `ckpt` (weight_words); throws
// Error naming the first weight that is missing, misshapen, of another dtype or not finite.
void upload_weights(Session& session, const Checkpoint& ckpt);

}  // namespace adamk
