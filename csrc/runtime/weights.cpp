// weights.cpp — safetensors checkpoints into a Session (weights.hpp).
#include "weights.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace adamk {

namespace {

const char* kIndex = "model.safetensors.index.json";     // adamk/runtime/weights.py INDEX, SINGLE
const char* kSingle = "model.safetensors";
constexpr uint64_t kMaxHeaderBytes = 100u << 20;         // safetensors' own limit on the JSON header
constexpr uint64_t kMaxIndexBytes = 16u << 20;           // weights.py MAX_INDEX_BYTES

bool is_dir(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& p) {          // a regular file, or a symbolic link to one
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

uint16_t bf16_of(float f) {           // round to nearest even, as torch's .to(torch.bfloat16)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

float float_of(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

void Checkpoint::unmap() noexcept {
  for (const Mapping& m : mappings_) munmap(m.base, m.length);
  mappings_.clear();
  tensors_.clear();
}

Checkpoint& Checkpoint::operator=(Checkpoint&& other) noexcept {
  if (this != &other) {
    unmap();
    mappings_ = std::move(other.mappings_);
    tensors_ = std::move(other.tensors_);
    other.mappings_.clear();
    other.tensors_.clear();
  }
  return *this;
}

Checkpoint::~Checkpoint() { unmap(); }

const TensorView& Checkpoint::at(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error("the checkpoint has no tensor " + quoted(name));
  return it->second;
}

// The safetensors format: 8 bytes of little-endian header length, a JSON header of
// {name: {dtype, shape, data_offsets: [begin, end]}} (and "__metadata__"), then the data.
void Checkpoint::map_file(const std::string& path, const std::map<std::string, bool>* wanted) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(quoted(path) + " cannot be opened");
  struct stat st;
  fstat(fd, &st);
  const size_t length = size_t(st.st_size);
  void* base = length >= 8 ? mmap(nullptr, length, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
  ::close(fd);
  if (base == MAP_FAILED) throw Error(quoted(path) + " is not a safetensors file (too short)");
  mappings_.push_back({base, length});
  const auto* bytes = static_cast<const unsigned char*>(base);
  uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = (header << 8) | bytes[i];
  if (header > kMaxHeaderBytes || 8 + header > length)
    throw Error(quoted(path) + " is not a safetensors file (its header length is " + std::to_string(header) + ")");
  json::Value h;
  try {
    h = json::parse(std::string(reinterpret_cast<const char*>(bytes + 8), header));
  } catch (const json::Error& e) {
    throw Error(quoted(path) + " is not a safetensors file (its header is not JSON: " + e.what() + ")");
  }
  if (!h.is_object()) throw Error(quoted(path) + " is not a safetensors file (its header is not an object)");
  const uint64_t data = 8 + header, size = length - data;
  for (const auto& [name, t] : h.object) {
    if (name == "__metadata__" || (wanted && !wanted->count(name))) continue;
    const json::Value* dtype = t.find("dtype");
    const json::Value* shape = t.find("shape");
    const json::Value* offsets = t.find("data_offsets");
    const bool ok = dtype && dtype->is_string() && shape && shape->kind == json::Value::Kind::Array && offsets &&
                    offsets->kind == json::Value::Kind::Array && offsets->array.size() == 2 &&
                    offsets->array[0].is_int() && offsets->array[1].is_int();
    if (!ok) throw Error(quoted(path) + ": tensor " + quoted(name) + " has a malformed header entry");
    TensorView v;
    v.dtype = dtype->string;
    for (const json::Value& d : shape->array) {
      if (!d.is_int() || d.number < 0 || d.number > double(kMaxBytes))
        throw Error(quoted(path) + ": tensor " + quoted(name) + " has a bad shape");
      v.shape.push_back(int64_t(d.number));
    }
    const double begin = offsets->array[0].number, end = offsets->array[1].number;
    if (begin < 0 || end < begin || end > double(size))
      throw Error(quoted(path) + ": tensor " + quoted(name) + " lies outside the file");
    v.data = bytes + data + uint64_t(begin);
    v.bytes = uint64_t(end - begin);
    tensors_[name] = std::move(v);
  }
}

Checkpoint Checkpoint::open(const std::string& path) {
  Checkpoint c;
  if (!is_dir(path)) {
    if (path.size() < 12 || path.compare(path.size() - 12, 12, ".safetensors") != 0)
      throw Error(quoted(path) + ": weights are read from .safetensors or a checkpoint directory");
    if (!is_file(path)) throw Error(quoted(path) + " is not a file");
    c.map_file(path, nullptr);
    return c;
  }
  // The index and the shards may be symbolic links to regular files, as every file of a Hugging Face
  // cache snapshot is (to its blob); shards are named by plain file names beside the index.
  const std::string index = path + "/" + kIndex;
  struct stat st;
  const bool has_index = stat(index.c_str(), &st) == 0;
  if (!has_index && is_file(path + "/" + kSingle)) {
    c.map_file(path + "/" + kSingle, nullptr);
    return c;
  }
  if (!has_index)
    throw Error(quoted(path) + " holds neither " + kIndex + " nor " + kSingle);
  if (!S_ISREG(st.st_mode) || uint64_t(st.st_size) > kMaxIndexBytes)
    throw Error(quoted(index) + " is not a regular file of at most 16 MB");
  std::string text(size_t(st.st_size), '\0');
  FILE* f = std::fopen(index.c_str(), "rb");
  if (!f || std::fread(text.data(), 1, text.size(), f) != text.size()) {
    if (f) std::fclose(f);
    throw Error("cannot read " + quoted(index));
  }
  std::fclose(f);
  json::Value j;
  try {
    j = json::parse(text);
  } catch (const json::Error&) {
    throw Error(quoted(index) + " is not JSON");
  }
  const json::Value* map = j.find("weight_map");
  if (!map || !map->is_object()) throw Error(quoted(index) + " has no 'weight_map' of tensor names to shard file names");
  std::map<std::string, std::map<std::string, bool>> shards;      // shard -> the tensors it holds
  for (const auto& [name, shard] : map->object) {
    if (!shard.is_string()) throw Error(quoted(index) + " has no 'weight_map' of tensor names to shard file names");
    const std::string& s = shard.string;
    if (s.empty() || s == "." || s == ".." || s.find('/') != std::string::npos || s.find('\\') != std::string::npos ||
        s.find('\0') != std::string::npos)
      throw Error(quoted(index) + " names shard " + quoted(s) + " for " + quoted(name) +
                  "; a shard must be a plain file name in the index's directory");
    const std::string file = path + "/" + s;
    struct stat ss;
    if (!is_file(file))
      throw Error("shard " + quoted(s) + " of " + quoted(index) + " (for " + quoted(name) + ") is " +
                  (stat(file.c_str(), &ss) == 0 ? "not a regular file" : "missing"));
    shards[s][name] = true;
  }
  for (const auto& [s, names] : shards) {
    c.map_file(path + "/" + s, &names);
    for (const auto& entry : names)
      if (!c.has(entry.first))
        throw Error(quoted(path + "/" + s) + " has no tensor " + quoted(entry.first) + ", which its index names");
  }
  return c;
}

std::vector<uint16_t> pack_pages(const std::vector<const uint16_t*>& sources, int64_t n, int64_t k,
                                 int64_t page_rows, int64_t page_cols, int64_t k_chunk, int64_t chunk_pages) {
  const int64_t blocks = (n + page_rows - 1) / page_rows, chunks = (k + k_chunk - 1) / k_chunk;
  const int64_t col_pages = chunks * chunk_pages, rows = int64_t(sources.size()) * page_rows;
  std::vector<uint16_t> out(size_t(blocks * col_pages * rows * page_cols), 0);    // zeros past the weight
  // page (b, c) at index b * col_pages + c: rows [b * page_rows, (b + 1) * page_rows) of every source
  // in turn x the c-th page of columns (K-chunk c / chunk_pages, its page c % chunk_pages)
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t c = 0; c < col_pages; ++c) {
      uint16_t* page = out.data() + (b * col_pages + c) * rows * page_cols;
      const int64_t in_chunk = (c % chunk_pages) * page_cols, col0 = (c / chunk_pages) * k_chunk + in_chunk;
      const int64_t width = std::min({page_cols, k_chunk - in_chunk, k - col0});
      for (size_t s = 0; s < sources.size(); ++s)
        for (int64_t r = 0; r < page_rows && b * page_rows + r < n && width > 0; ++r)
          std::memcpy(page + (int64_t(s) * page_rows + r) * page_cols, sources[s] + (b * page_rows + r) * k + col0,
                      size_t(width) * 2);
    }
  return out;
}

// A safetensors dtype by torch's name, as the Python runtime's messages print it.
static std::string torch_dtype(const std::string& dtype) {
  static const std::map<std::string, std::string> names = {
      {"F64", "torch.float64"}, {"F32", "torch.float32"}, {"F16", "torch.float16"}, {"BF16", "torch.bfloat16"},
      {"F8_E4M3", "torch.float8_e4m3fn"}, {"F8_E5M2", "torch.float8_e5m2"}, {"I64", "torch.int64"},
      {"I32", "torch.int32"}, {"I16", "torch.int16"}, {"I8", "torch.int8"}, {"U64", "torch.uint64"},
      {"U32", "torch.uint32"}, {"U16", "torch.uint16"}, {"U8", "torch.uint8"}, {"BOOL", "torch.bool"},
      {"C64", "torch.complex64"}};
  const auto it = names.find(dtype);
  return it != names.end() ? it->second : dtype;
}

std::map<std::string, std::vector<uint16_t>> weight_words(const Artifact& a, const Checkpoint& ckpt) {
  // adamk/runtime/weights.py check_weights: the same order and the same words.
  std::vector<std::string> missing;
  std::vector<const std::string*> held_as;     // the checkpoint's name of each weight, in a.weights()'s order
  std::map<std::string, std::vector<uint16_t>> words;
  for (const Weight& w : a.weights()) {
    const std::string* held = ckpt.has(w.name) ? &w.name : nullptr;
    for (const std::string& alias : w.aliases)
      if (!held && ckpt.has(alias)) held = &alias;
    if (!held) missing.push_back(quoted(w.name));
    held_as.push_back(held);
  }
  if (!missing.empty()) {
    std::string msg = "weights are missing ";
    for (size_t i = 0; i < missing.size() && i < 5; ++i) msg += (i ? ", " : "") + missing[i];
    if (missing.size() > 5) msg += " and " + std::to_string(missing.size() - 5) + " more";
    throw Error(msg);
  }
  for (size_t wi = 0; wi < a.weights().size(); ++wi) {
    const Weight& w = a.weights()[wi];
    const TensorView& t = ckpt.at(*held_as[wi]);
    if (t.dtype != "F32" && t.dtype != "BF16")
      throw Error("weight " + quoted(w.name) + " is " + torch_dtype(t.dtype) +
                  "; the artifact takes float32 or bfloat16 tensors");
    auto list = [](const std::vector<int64_t>& v) {
      std::string s = "[";
      for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
      return s + "]";
    };
    if (t.shape != w.shape)
      throw Error("weight " + quoted(w.name) + " has shape " + list(t.shape) + ", the artifact expects " + list(w.shape));
    int64_t count = 1;               // the manifest's shape (bounded by Artifact::open), equal to the tensor's
    for (int64_t d : w.shape) count = checked_product({count, d}, "weight " + quoted(w.name));
    if (t.bytes != uint64_t(count) * (t.dtype == "F32" ? 4 : 2))
      throw Error("weight " + quoted(w.name) + ": its bytes do not match its shape");
    std::vector<uint16_t> out(static_cast<size_t>(count));
    bool finite = true;
    for (int64_t i = 0; i < count; ++i) {
      float f;
      if (t.dtype == "F32") {
        std::memcpy(&f, t.data + 4 * i, 4);
        out[size_t(i)] = bf16_of(f);
      } else {
        std::memcpy(&out[size_t(i)], t.data + 2 * i, 2);
        f = float_of(out[size_t(i)]);
      }
      finite = finite && std::isfinite(f);
    }
    if (!finite) throw Error("weight " + quoted(w.name) + " holds NaN or Inf values");
    words[w.name] = std::move(out);
  }
  return words;
}

void upload_weights(Session& session, const Checkpoint& ckpt) {
  const Artifact& a = session.artifact();
  std::map<std::string, std::vector<uint16_t>> words = weight_words(a, ckpt);
  // Each weight buffer: its weights stacked by slot, packed where the manifest says so.
  for (const Buffer& b : a.buffers()) {
    if (b.role != "weight") continue;
    const Packing* p = a.packing_of(b.name);
    if (p && p->buffer != b.name) continue;           // stored in its packing's buffer
    if (b.dtype != "bf16") throw Error("weight buffer " + quoted(b.name) + " is " + b.dtype + "; this runtime stores bf16");
    std::vector<std::vector<const Weight*>> by_slot(size_t(b.slots));
    std::map<std::string, std::vector<const Weight*>> source_slots;
    for (const Weight& w : a.weights()) {
      if (w.buffer == b.name && w.slot >= 0 && w.slot < b.slots) by_slot[size_t(w.slot)].push_back(&w);
      if (p) source_slots[w.buffer].push_back(&w);
    }
    std::vector<uint16_t> data;
    for (int64_t slot = 0; slot < b.slots; ++slot) {
      if (!p) {
        for (const Weight* w : by_slot[size_t(slot)]) data.insert(data.end(), words[w->name].begin(), words[w->name].end());
        continue;
      }
      std::vector<const uint16_t*> sources;
      for (const std::string& s : p->sources)
        for (const Weight* w : source_slots[s])
          if (w->slot == slot) sources.push_back(words[w->name].data());
      if (sources.size() != p->sources.size())
        throw Error("weight buffer " + quoted(b.name) + " lacks a source weight at slot " + std::to_string(slot));
      const std::vector<uint16_t> pages = pack_pages(sources, p->n, p->k, p->page_rows, p->page_cols, p->k_chunk,
                                                     p->chunk_pages);
      data.insert(data.end(), pages.begin(), pages.end());
    }
    session.upload(b.name, data.data(), 2 * uint64_t(data.size()));
  }
}

}  // namespace adamk
