// session.hpp — an artifact's kernel on one GPU, ready to decode: the C++ twin of the Python
// runtime's DecodeStep / ModelStep (adamk/runtime/decode.py, model.py), with the same rules and
// the same error wording.
//
// Buffers are the manifest's, by name. The caller binds device memory it owns (`bind`: PyTorch
// tensors, say) or lets the session allocate it; weights are bound or uploaded (weights.hpp),
// every other buffer the session allocates unless bound, and initialises as the Python runtime
// does (tagged activations, KV caches, tokens and the position zero; other activations NaN).
// The session owns the launch state: the pointer table, the dependency counters, the error
// record, the per-block epochs (each launch runs at the next one, kept on the device, so a CUDA
// graph can replay one launch) and the trace of a profiling build. Before the epoch passes the
// manifest's kernel.max_epoch it zeroes the state; a launch it did not count (a replay of a graph
// someone else captured) that passes it is refused by the kernel and reported by `check`.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "artifact.hpp"
#include "driver.hpp"
#include "error_record.h"      // csrc/kernels: the device code's ErrorReason

namespace adamk {

// A failure the kernel reported; `reason` (error_record.h ErrorReason) lets a binding pick its type.
struct KernelError : Error {
  KernelError(uint32_t r, const std::string& what) : Error(what), reason(r) {}
  uint32_t reason;
};

// A session may be called from any thread: each public call holds its lock and makes the
// session's context current for its duration (the caller's is restored after).
class Session {
 public:
  // Loads the kernel on GPU `device` (its primary context made current on this thread) and
  // allocates the launch state; throws Error if the GPU cannot hold the grid.
  Session(Artifact artifact, int device = 0, double timeout_s = 2.0);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const Artifact& artifact() const { return artifact_; }
  const std::string& loaded_from() const { return loaded_from_; }     // "cubin" or "ptx"

  // Buffer `name` lives at `ptr` (caller-owned, `bytes` long: the manifest's size). Before the
  // first launch only.
  void bind(const std::string& name, CUdeviceptr ptr, uint64_t bytes);
  // Copies `bytes` (the buffer's whole size) from host memory into buffer `name` (allocated now if
  // unbound): how weights.hpp uploads packed weights.
  void upload(const std::string& name, const void* data, uint64_t bytes);
  // The device address of buffer `name` (allocated and initialised now if unbound; a weight must
  // have been bound or uploaded).
  CUdeviceptr buffer(const std::string& name);
  const Buffer& describe(const std::string& name) const;
  // Copies `bytes` from `offset` of buffer `name` to host memory (waits for the GPU).
  void read(const std::string& name, void* out, uint64_t offset, uint64_t bytes);

  int max_seq_len() const { return max_seq_len_; }
  uint32_t epoch() const { return epoch_; }          // the epoch the last launch ran at
  uint32_t max_epoch() const { return max_epoch_; }
  void set_max_epoch(uint32_t e);                    // tests force an early wrap
  double timeout_s() const { return double(timeout_ns_) * 1e-9; }
  void set_timeout_s(double s);

  // Enqueue one step on `stream` (null: the legacy default stream): a layer at `pos`; a whole model
  // at its device position (`pos` is not used). launch = advance + enqueue.
  void launch(int pos, CUstream stream);
  // Count one launch: before the epoch would pass max_epoch, zero the state (the GPU waited for).
  // A caller that replays a captured enqueue calls it once per replay.
  void advance();
  // Enqueue the kernel without counting it (into a CUDA graph capture, say).
  void enqueue(int pos, CUstream stream);
  // Every buffer bound or allocated and the pointer table uploaded (the first launch does it; a
  // caller about to capture a launch into a CUDA graph does it first: it waits for the GPU).
  void prepare();
  // A whole model: the next launch decodes `token` at `pos` (the id into the sequence, the
  // position into the slot that launch reads), ordered on `stream`. A batch: one token and one
  // position per sequence (the one-sequence form refuses a batch).
  void start(int token, int pos, CUstream stream);
  void start(const std::vector<int>& tokens, const std::vector<int>& positions, CUstream stream);
  // A batched layer: the positions, one per sequence, that the next launches read (the device
  // buffer `position`; launch's `pos` is then the first sequence's, which its tasks do not read).
  // Before the first launch of a batched layer.
  void set_positions(const std::vector<int>& positions, CUstream stream);
  int batch() const { return artifact_.batch(); }
  // Waits for the GPU and throws KernelError if the kernel reported one (the task and what it
  // waited for are named). After one, reset() before the next step.
  void check();
  // Counters, tagged activations, epochs and the error record back to zero (the GPU waited for).
  void reset();
  // The profiling build's stamps, [layers][tasks][slots] (manifest kernel.trace_slots).
  std::vector<uint64_t> trace();

 private:
  class Scope;                   // the lock and the session's context, for one public call
  void release() noexcept;       // frees what the session holds (the destructor's and a failed constructor's)
  void check_position(int pos) const;   // a KV cache row: 0..max_seq_len-1
  int launch_position(int pos) const;   // the kernel's `pos` argument, checked
  void zero_state(CUstream s);
  std::string element_at(uint64_t address);

  Artifact artifact_;
  const Driver& driver_;
  int device_;
  CUcontext ctx_ = nullptr;
  CUmodule module_ = nullptr;
  CUfunction fn_ = nullptr;
  std::string loaded_from_;
  struct Slot {
    CUdeviceptr ptr = 0;
    bool owned = false, written = false;
  };
  std::map<std::string, Slot> slots_;        // by buffer name
  std::vector<CUdeviceptr> owned_;           // state and buffers the session allocated
  CUdeviceptr table_ = 0, counters_ = 0, error_ = 0, epochs_ = 0, trace_ = 0;
  size_t n_counters_ = 1, trace_words_ = 0;
  bool prepared_ = false;
  bool positions_set_ = false;   // a batched layer's set_positions ran
  int max_seq_len_ = 0;
  uint32_t epoch_ = 0, max_epoch_ = 0;
  uint64_t timeout_ns_ = 0;
  // The kernel's arguments in the manifest's order, each an index into kKernelArgNames: found once
  // by the constructor, so a launch fills a fixed array.
  std::array<int, kKernelArgs> arg_order_{};
  std::recursive_mutex mutex_;   // public calls nest (launch = advance + enqueue)
  int scope_depth_ = 0;          // Scopes open on the thread holding mutex_ (the context is pushed once)
};

}  // namespace adamk
