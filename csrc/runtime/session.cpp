// session.cpp — an artifact's kernel on one GPU (session.hpp).
#include "session.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace adamk {

namespace {

constexpr uint16_t kBf16Nan = 0x7fc0;
constexpr uint32_t kF32Nan = 0x7fc00000u;

std::string as_signed(uint32_t v) { return std::to_string(int32_t(v)); }

}  // namespace

// The lock and the session's context for one public call. Calls nest (launch = advance + enqueue,
// each preparing): only the outermost pushes and pops the context (the lock makes the depth this
// thread's), so a launch makes one push, not four.
class Session::Scope {
 public:
  explicit Scope(Session& s) : session_(s), lock_(s.mutex_) {
    if (s.scope_depth_ == 0) s.driver_.push_current(s.ctx_);
    ++s.scope_depth_;
  }
  ~Scope() {
    if (--session_.scope_depth_ == 0) session_.driver_.pop_current();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  Session& session_;
  std::lock_guard<std::recursive_mutex> lock_;
};

Session::Session(Artifact artifact, int device, double timeout_s)
    : artifact_(std::move(artifact)), driver_(Driver::get()), device_(device) {
  set_timeout_s(timeout_s);
  // Artifact::open checked that the kernel takes kKernelArgNames, each once; enqueue() passes them
  // in that order of values.
  const std::vector<std::string>& names = artifact_.kernel().args;
  if (names.size() != size_t(kKernelArgs))      // an Artifact not made by Artifact::open
    throw Error("the artifact's kernel takes arguments other than this runtime passes");
  for (int i = 0; i < kKernelArgs; ++i)
    arg_order_[size_t(i)] = int(std::find(std::begin(kKernelArgNames), std::end(kKernelArgNames), names[size_t(i)]) -
                                std::begin(kKernelArgNames));
  const std::string file = driver_.module_file(artifact_, device);     // refuses an older GPU
  ctx_ = driver_.retain_primary(device);
  const Kernel& k = artifact_.kernel();
  try {
    const Scope scope(*this);
    std::string image = artifact_.file(file);
    if (file == "kernel.ptx") image.push_back('\0');                   // the driver JIT-compiles it
    loaded_from_ = file == "kernel.ptx" ? "ptx" : "cubin";
    module_ = driver_.load_module(image);
    fn_ = driver_.function(module_, k.name);
    driver_.set_dynamic_smem(fn_, k.smem_bytes);
    const int fit = driver_.max_blocks_per_sm(fn_, k.block_threads, k.smem_bytes) * driver_.sm_count(device);
    if (fit < k.grid)
      throw Error("the megakernel needs " + std::to_string(k.grid) + " co-resident blocks of " +
                  std::to_string(k.block_threads) + " threads and " + std::to_string(k.smem_bytes) +
                  " B shared memory; this GPU holds " + std::to_string(fit));
    max_epoch_ = k.max_epoch;
    for (const Buffer& b : artifact_.buffers()) {
      slots_[b.name] = Slot{};
      if (b.name == "k_cache" && b.shape.size() >= 2) max_seq_len_ = int(b.shape[b.shape.size() - 2]);
    }
    if (max_seq_len_ == 0) throw Error("artifact " + artifact_.dir() + " has no 'k_cache' buffer");
    auto state = [&](size_t bytes) { return owned_.emplace_back(driver_.alloc(bytes)); };
    n_counters_ = std::max<size_t>(1, artifact_.counters().size() + size_t(k.extra_counters));
    table_ = state(8 * artifact_.buffers().size());
    counters_ = state(4 * n_counters_);
    error_ = state(4 * kErrorRecordWords);
    epochs_ = state(4 * size_t(k.grid));
    trace_words_ = size_t(artifact_.layers()) * artifact_.tasks().size() * size_t(k.trace_slots);
    if (trace_words_) trace_ = state(8 * trace_words_);
    driver_.fill32(error_, 0, kErrorRecordWords, nullptr);
    zero_state(nullptr);
    driver_.synchronize(nullptr);
  } catch (...) {
    release();
    throw;
  }
}

Session::~Session() { release(); }

void Session::release() noexcept {
  if (!ctx_) return;
  try {
    driver_.push_current(ctx_);
    try {
      driver_.synchronize_context();
    } catch (const Error&) {      // a failed launch: free what is held all the same
    }
    for (CUdeviceptr p : owned_) driver_.free(p);
    if (module_) driver_.unload_module(module_);
    driver_.pop_current();
  } catch (const Error&) {        // the context could not be made current: nothing to free in it
  }
  owned_.clear();
  module_ = nullptr;
  driver_.release_primary(device_);
  ctx_ = nullptr;
}

const Buffer& Session::describe(const std::string& name) const {
  for (const Buffer& b : artifact_.buffers())
    if (b.name == name) return b;
  throw Error("the artifact has no buffer " + quoted(name));
}

void Session::bind(const std::string& name, CUdeviceptr ptr, uint64_t bytes) {
  const std::lock_guard<std::recursive_mutex> lock(mutex_);   // no CUDA call
  const Buffer& b = describe(name);
  if (prepared_) throw Error("buffer " + quoted(name) + " bound after the first launch");
  const int64_t want = artifact_.device_bytes(b);
  if (bytes != uint64_t(want))
    throw Error("buffer " + quoted(name) + " is " + std::to_string(want) + " bytes; " + std::to_string(bytes) +
                " were bound");
  if (!ptr) throw Error("buffer " + quoted(name) + " bound to a null pointer");
  slots_[name] = Slot{ptr, false, true};
}

void Session::upload(const std::string& name, const void* data, uint64_t bytes) {
  const Scope scope(*this);
  const int64_t want = artifact_.device_bytes(describe(name));
  if (bytes != uint64_t(want))
    throw Error("buffer " + quoted(name) + " is " + std::to_string(want) + " bytes; " + std::to_string(bytes) +
                " were given");
  Slot& s = slots_[name];
  if (!s.ptr) s = Slot{owned_.emplace_back(driver_.alloc(bytes)), true, false};
  driver_.copy_to_device(s.ptr, data, bytes, nullptr);
  driver_.synchronize(nullptr);
  s.written = true;
}

CUdeviceptr Session::buffer(const std::string& name) {
  const Scope scope(*this);
  const Buffer& b = describe(name);
  Slot& s = slots_[name];
  if (s.ptr) return s.ptr;
  const Packing* p = artifact_.packing_of(name);
  if (p && p->buffer != name) return buffer(p->buffer);      // a gated linear's up rows: in its gate's pages
  if (b.role == "weight") throw Error("weight buffer " + quoted(name) + " is neither bound nor uploaded");
  s = Slot{owned_.emplace_back(driver_.alloc(size_t(b.bytes()))), true, true};
  // The Python runtime's initial values: words that read as "not written this step", zero caches,
  // and NaN in the other activations (a read before a write shows).
  if (b.tagged() || b.role == "kv_cache" || b.role == "tokens" || b.role == "position" ||
      b.dtype == "i32")
    driver_.fill32(s.ptr, 0, size_t(b.bytes()) / 4, nullptr);
  else if (b.dtype == "bf16")
    driver_.fill16(s.ptr, kBf16Nan, size_t(b.bytes()) / 2, nullptr);
  else
    driver_.fill32(s.ptr, kF32Nan, size_t(b.bytes()) / 4, nullptr);
  return s.ptr;
}

void Session::read(const std::string& name, void* out, uint64_t offset, uint64_t bytes) {
  const Scope scope(*this);
  const int64_t size = artifact_.device_bytes(describe(name));
  if (offset > uint64_t(size) || bytes > uint64_t(size) - offset)
    throw Error("bytes " + std::to_string(offset) + ".." + std::to_string(offset + bytes) + " lie outside buffer " +
                quoted(name) + " (" + std::to_string(size) + " bytes)");
  const CUdeviceptr p = buffer(name);
  driver_.synchronize_context();
  driver_.copy_to_host(out, p + offset, bytes, nullptr);
  driver_.synchronize(nullptr);
}

void Session::prepare() {
  const Scope scope(*this);
  if (prepared_) return;
  std::vector<uint64_t> table;
  for (const Buffer& b : artifact_.buffers()) table.push_back(buffer(b.name));
  driver_.copy_to_device(table_, table.data(), 8 * table.size(), nullptr);
  driver_.synchronize(nullptr);
  prepared_ = true;
}

void Session::set_max_epoch(uint32_t e) {
  const std::lock_guard<std::recursive_mutex> lock(mutex_);   // no CUDA call
  if (e < 1 || e > artifact_.kernel().max_epoch)
    throw Error("max_epoch must be 1.." + std::to_string(artifact_.kernel().max_epoch));
  max_epoch_ = e;
}

void Session::set_timeout_s(double s) {
  const std::lock_guard<std::recursive_mutex> lock(mutex_);   // no CUDA call
  if (!(s > 0) || !std::isfinite(s)) throw Error("the wait timeout must be a positive number of seconds");
  timeout_ns_ = uint64_t(s * 1e9) ? uint64_t(s * 1e9) : 1;
}

// The position a whole model's next launch reads sits in the slot of that launch's epoch parity.
void Session::start(int token, int pos, CUstream stream) { start(std::vector<int>{token}, std::vector<int>{pos}, stream); }

void Session::start(const std::vector<int>& tokens, const std::vector<int>& positions, CUstream stream) {
  const Scope scope(*this);
  if (!artifact_.whole_model()) throw Error("start(token, pos) is a whole model's; this artifact is one layer");
  const int batch = artifact_.batch();
  if (tokens.size() != size_t(batch) || positions.size() != size_t(batch))
    throw Error(std::to_string(tokens.size()) + " tokens and " + std::to_string(positions.size()) +
                " positions for a batch of " + std::to_string(batch));
  const int64_t row = describe("tokens").elements() / batch;     // a sequence's ids: tokens is [batch, row]
  for (int b = 0; b < batch; ++b) {
    check_position(positions[size_t(b)]);
    if (row <= positions[size_t(b)])
      throw Error("the artifact's tokens buffer is too small for position " + std::to_string(positions[size_t(b)]));
    if (tokens[size_t(b)] < 0 || tokens[size_t(b)] >= artifact_.vocab_size())
      throw Error("token id " + std::to_string(tokens[size_t(b)]) + " outside the vocabulary 0.." +
                  std::to_string(artifact_.vocab_size() - 1));
  }
  if (describe("position").elements() != 2 * int64_t(batch))
    throw Error("the artifact's position buffer does not hold two slots per sequence");
  prepare();     // every buffer bound or allocated, and its initial fill done, before the copies below
  // Each token into its sequence's row, each position into both of its slots (the next launch reads
  // the slot of its epoch's parity, and a zeroing at the wrap before it moves one slot into the other).
  std::vector<int32_t> slots;
  for (int b = 0; b < batch; ++b) {
    const int pos = positions[size_t(b)];
    driver_.copy_to_device(buffer("tokens") + 4 * uint64_t(b * row + pos), &tokens[size_t(b)], 4, stream);
    slots.insert(slots.end(), {pos, pos});
  }
  driver_.copy_to_device(buffer("position"), slots.data(), 4 * slots.size(), stream);
  driver_.synchronize(stream);         // the host values above live in this frame
}

void Session::set_positions(const std::vector<int>& positions, CUstream stream) {
  const Scope scope(*this);
  if (artifact_.whole_model())
    throw Error("a whole model's positions are the device's: start(tokens, positions) sets them");
  const int batch = artifact_.batch();
  if (batch == 1) throw Error("set_positions is a batch's; one sequence's position is launch's pos");
  if (positions.size() != size_t(batch))
    throw Error(std::to_string(positions.size()) + " positions for a batch of " + std::to_string(batch) + " sequences");
  for (int p : positions) check_position(p);
  if (describe("position").elements() != batch)
    throw Error("the artifact's position buffer does not hold one position per sequence");
  prepare();      // every buffer bound or allocated, and its initial fill done, before the copy below
  const std::vector<int32_t> values(positions.begin(), positions.end());
  driver_.copy_to_device(buffer("position"), values.data(), 4 * values.size(), stream);
  driver_.synchronize(stream);
  positions_set_ = true;
}

void Session::advance() {
  const Scope scope(*this);
  prepare();
  if (epoch_ >= max_epoch_) {          // >=: max_epoch may have been lowered below the count
    driver_.synchronize_context();     // no launch queued on another stream still runs
    zero_state(nullptr);
    driver_.synchronize(nullptr);
    epoch_ = 0;
  }
  ++epoch_;
}

void Session::zero_state(CUstream s) {
  // A whole model keeps its positions: each sequence's moves to the slot of epoch 1's parity.
  std::vector<int32_t> slots;
  const bool model = artifact_.whole_model() && prepared_;
  if (model) {
    slots.resize(size_t(describe("position").elements()));
    driver_.copy_to_host(slots.data(), buffer("position"), 4 * slots.size(), s);
    driver_.synchronize(s);
    for (size_t b = 0; b + 1 < slots.size(); b += 2) slots[b + 1] = slots[b + ((epoch_ + 1) & 1u)];
  }
  driver_.fill32(counters_, 0, n_counters_, s);
  driver_.fill32(epochs_, 0, size_t(artifact_.kernel().grid), s);
  for (const Buffer& b : artifact_.buffers())
    if (b.tagged() && slots_[b.name].ptr) driver_.fill32(slots_[b.name].ptr, 0, size_t(b.bytes()) / 4, s);
  if (model) {
    driver_.copy_to_device(buffer("position"), slots.data(), 4 * slots.size(), s);
    driver_.synchronize(s);
  }
}

void Session::check_position(int pos) const {
  if (pos < 0 || pos >= max_seq_len_)
    throw Error("position " + std::to_string(pos) + " outside the KV cache's 0.." + std::to_string(max_seq_len_ - 1));
}

int Session::launch_position(int pos) const {
  if (artifact_.whole_model()) return 0;      // the kernel reads the position from the device
  if (artifact_.batch() > 1 && !positions_set_)
    throw Error("a batch of " + std::to_string(artifact_.batch()) +
                " decodes one position per sequence: set_positions before the first launch");
  check_position(pos);
  return pos;
}

void Session::launch(int pos, CUstream stream) {
  const Scope scope(*this);
  launch_position(pos);                 // before the launch is counted
  advance();
  enqueue(pos, stream);
}

void Session::enqueue(int pos, CUstream stream) {
  const Scope scope(*this);
  pos = launch_position(pos);
  prepare();
  uint64_t table = table_, counters = counters_, error = error_, trace = trace_, epochs = epochs_;
  int32_t position = pos;
  uint64_t timeout = timeout_ns_;
  void* const values[kKernelArgs] = {&table, &counters, &error, &trace, &position, &epochs, &timeout};   // kKernelArgNames
  void* args[kKernelArgs];
  for (int i = 0; i < kKernelArgs; ++i) args[i] = values[arg_order_[size_t(i)]];
  const Kernel& k = artifact_.kernel();
  driver_.launch_cooperative(fn_, k.grid, k.block_threads, k.smem_bytes, stream, args);
}

std::string Session::element_at(uint64_t address) {
  for (const Buffer& b : artifact_.buffers()) {
    const CUdeviceptr p = slots_[b.name].ptr;
    if (b.tagged() && p && address >= p && address < p + uint64_t(b.bytes()))
      return "'" + b.name + "'[" + std::to_string((address - p) / b.element_bytes()) + "]";
  }
  char text[32];
  std::snprintf(text, sizeof text, "%#llx", static_cast<unsigned long long>(address));
  return std::string("the word at ") + text;
}

// The messages of adamk/runtime/decode.py DecodeStep.check, word for word.
void Session::check() {
  const Scope scope(*this);
  driver_.synchronize_context();
  uint32_t e[kErrorRecordWords];
  driver_.copy_to_host(e, error_, sizeof e, nullptr);
  driver_.synchronize(nullptr);
  if (!e[0]) return;
  const uint32_t task = e[1], counter = e[2], expected = e[3], observed = e[4], block = e[5], reason = e[6];
  const std::vector<std::string>& tasks = artifact_.tasks();
  const std::string name = task < tasks.size() ? tasks[task] : std::to_string(task);
  switch (reason) {
    case kSmemOverflow:
      throw KernelError(reason, "megakernel task '" + name + "' on block " + std::to_string(block) + " needs " +
                                    std::to_string(expected) + " B of shared memory; the launch gave " +
                                    std::to_string(observed) + " B");
    case kBadToken:
      throw KernelError(reason, "token id " + as_signed(observed) + " outside the vocabulary 0.." +
                                    std::to_string(expected - 1));
    case kBadPosition:
      throw KernelError(reason, "position " + as_signed(observed) + " outside the KV cache's 0.." +
                                    std::to_string(expected - 1));
    case kEpochsExhausted:
      throw KernelError(reason, "the megakernel ran out of epochs (launch at epoch " + std::to_string(observed) +
                                    ", the last is " + std::to_string(expected) +
                                    "): launches the runtime did not count (a CUDA graph it did not capture, "
                                    "replayed) passed the wrap; reset() the step");
    case kPollTimeout:
      throw KernelError(reason, "megakernel wait timed out: block " + std::to_string(block) + " running task '" +
                                    name + "' waited for " + element_at((uint64_t(e[8]) << 32) | e[7]) +
                                    " of step " + std::to_string(expected) + ", saw a word of step " +
                                    std::to_string(observed));
    default: {
      std::string what = "a weight page";
      if (counter != kRingCounter) {
        what = "counter '" + std::to_string(counter) + "'";
        for (const Counter& c : artifact_.counters())
          if (uint32_t(c.index) == counter) what = "counter '" + c.name + "'";
      }
      throw KernelError(reason, "megakernel wait timed out: block " + std::to_string(block) + " running task '" +
                                    name + "' waited on " + what + " for " + std::to_string(expected) + ", saw " +
                                    std::to_string(observed));
    }
  }
}

void Session::reset() {
  const Scope scope(*this);
  driver_.synchronize_context();
  zero_state(nullptr);
  driver_.fill32(error_, 0, kErrorRecordWords, nullptr);
  driver_.synchronize(nullptr);
  epoch_ = 0;
}

std::vector<uint64_t> Session::trace() {
  const Scope scope(*this);
  if (!trace_words_) throw Error("this artifact was not compiled with CompileConfig(profile=True)");
  check();
  std::vector<uint64_t> out(trace_words_);
  driver_.copy_to_host(out.data(), trace_, 8 * trace_words_, nullptr);
  driver_.synchronize(nullptr);
  return out;
}

}  // namespace adamk
