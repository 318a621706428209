// artifact.cpp — reading and checking an artifact directory (artifact.hpp).
#include "artifact.hpp"

#include <sys/stat.h>
#include <dirent.h>

#include <cstdio>
#include <fstream>
#include <algorithm>
#include <set>
#include <sstream>

#include "sha256.hpp"

namespace adamk {

namespace {

const char* kManifest = "manifest.json";

std::string kind_name(const json::Value& v) {
  switch (v.kind) {
    case json::Value::Kind::Null: return "null";
    case json::Value::Kind::Bool: return "bool";
    case json::Value::Kind::Number: return v.integral ? "int" : "float";
    case json::Value::Kind::String: return "str";
    case json::Value::Kind::Array: return "list";
    case json::Value::Kind::Object: return "dict";
  }
  return "?";
}

// A regular file (not a link), and its size.
bool regular_file(const std::string& path, uint64_t* size = nullptr) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  if (size) *size = uint64_t(st.st_size);
  return true;
}

bool exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path);
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    h.update(buf.data(), size_t(in.gcount()));
  }
  return h.hexdigest();
}

// adamk/artifact.py _plain_name
bool plain_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name != kManifest &&
         name.find('/') == std::string::npos && name.find('\\') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

// The field `key` of object `v` (the manifest or one of its objects, named `where`), of JSON type `type`.
const json::Value& field(const json::Value& v, const std::string& key, const std::string& type, const std::string& where) {
  const json::Value* f = v.find(key);
  if (!f) throw Error(where + " has no field '" + key + "'");
  const std::string k = kind_name(*f);
  const bool ok = k == type || (type == "number" && (k == "int" || k == "float"));
  if (!ok) throw Error(where + " field '" + key + "' is not of type " + (type == "number" ? "int/float" : type));
  return *f;
}

// An integer of the manifest (field() checked its JSON type): JSON numbers are doubles, so one past
// 2^53 is not exact, and casting a larger one to int64 is undefined.
int64_t as_int(const json::Value& v) {
  if (!(v.number >= -9007199254740992.0 && v.number <= 9007199254740992.0))
    throw Error("the manifest holds an integer too large for the runtime");
  return static_cast<int64_t>(v.number);
}

}  // namespace

// The manifest's weights and packed_weights, checked as adamk/runtime/weights.py packing_plan does.
void Artifact::read_weights(Artifact& a, const json::Value& m, const std::string& path) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const json::Value& w : field(m, "weights", "list", path).array) {
    const std::string where = path + " weight";
    Weight weight;
    weight.name = field(w, "name", "str", where).string;
    for (const json::Value& d : field(w, "shape", "list", where).array) {
      if (!d.is_int() || d.number <= 0) throw Error(where + " " + quoted(weight.name) + " has a bad shape");
      weight.shape.push_back(as_int(d));
    }
    weight.buffer = w.find("buffer") ? field(w, "buffer", "str", where).string : weight.name;
    if (w.find("slot")) weight.slot = as_int(field(w, "slot", "int", where));
    if (const json::Value* al = w.find("aliases"))
      for (const json::Value& n : al->array)
        if (n.is_string()) weight.aliases.push_back(n.string);
    shapes[weight.name] = weight.shape;
    a.weights_.push_back(std::move(weight));
  }
  std::set<std::string> packed;
  const json::Value& plan = field(m, "packed_weights", "list", path);
  for (size_t i = 0; i < plan.array.size(); ++i) {
    const std::string where = path + " packed_weights[" + std::to_string(i) + "]";
    const json::Value& e = plan.array[i];
    Packing p;
    p.buffer = field(e, "buffer", "str", where).string;
    for (const json::Value& n : field(e, "sources", "list", where).array) {
      if (!n.is_string()) throw Error(where + " is not an entry with a list of sources");
      p.sources.push_back(n.string);
    }
    int64_t* ints[] = {&p.page_rows, &p.page_cols, &p.k_chunk, &p.chunk_pages, &p.col_pages};
    const char* names[] = {"page_rows", "page_cols", "k_chunk", "chunk_pages", "col_pages"};
    for (int j = 0; j < 5; ++j) {
      *ints[j] = as_int(field(e, names[j], "int", where));
      if (*ints[j] < 1) throw Error(where + " needs positive integers page_rows, page_cols, k_chunk, chunk_pages, col_pages");
    }
    if (p.sources.empty() || p.sources[0] != p.buffer)
      throw Error(where + ": its sources must be 2-D weights of one shape, the first its buffer");
    for (const std::string& n : p.sources) {
      if (!shapes.count(n)) throw Error(where + " names " + quoted(n) + ", which is not a weight of the artifact");
      if (!packed.insert(n).second) throw Error(where + " packs " + quoted(n) + " a second time");
      if (shapes[n] != shapes[p.buffer] || shapes[n].size() != 2)
        throw Error(where + ": its sources must be 2-D weights of one shape, the first its buffer");
    }
    p.n = shapes[p.buffer][0];
    p.k = shapes[p.buffer][1];
    if (p.chunk_pages * p.page_cols < p.k_chunk || p.col_pages != (p.k + p.k_chunk - 1) / p.k_chunk * p.chunk_pages)
      throw Error(where + ": " + std::to_string(p.chunk_pages) + " pages of " + std::to_string(p.page_cols) +
                  " columns per K-chunk of " + std::to_string(p.k_chunk) + " do not cover K = " + std::to_string(p.k) +
                  " in " + std::to_string(p.col_pages) + " pages");
    a.packings_.push_back(std::move(p));
  }
}

const Packing* Artifact::packing_of(const std::string& name) const {
  for (const Packing& p : packings_)
    for (const std::string& s : p.sources)
      if (s == name) return &p;
  return nullptr;
}

int64_t checked_product(std::initializer_list<int64_t> factors, const std::string& what) {
  int64_t n = 1;
  for (int64_t f : factors)
    if (f < 0 || __builtin_mul_overflow(n, f, &n) || n > kMaxBytes)
      throw Error(what + " is larger than the runtime takes (over " + std::to_string(kMaxBytes) + " bytes)");
  return n;
}

int64_t Artifact::device_bytes(const Buffer& b) const {
  const Packing* p = packing_of(b.name);
  if (!p) return b.bytes();
  const int64_t blocks = (p->n + p->page_rows - 1) / p->page_rows;
  return checked_product({b.slots, int64_t(p->sources.size()), blocks, p->page_rows, p->col_pages, p->page_cols, 2},
                         "buffer " + quoted(b.name));
}

std::string quoted(const std::string& name) { return "'" + printable(name) + "'"; }

std::string printable(const std::string& name) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  const size_t limit = 120;
  for (size_t i = 0; i < name.size() && i < limit; ++i) {
    const unsigned char c = name[i];
    if (c >= 0x20 && c < 0x7f) {
      out += char(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (name.size() > limit) out += "... (" + std::to_string(name.size()) + " characters)";
  return out;
}

int64_t Buffer::elements() const {        // bounded: Artifact::open checked bytes()
  int64_t n = slots;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t Buffer::element_bytes() const {     // bf16x2_tagged: a pair word holds two elements
  return dtype == "bf16" ? 2 : dtype == "f32_tagged" ? 8 : 4;      // bf16x2_tagged, i32 (Artifact::open checks)
}

int64_t Buffer::bytes() const { return elements() * element_bytes(); }

bool Buffer::tagged() const { return dtype == "f32_tagged" || dtype == "bf16x2_tagged"; }

Artifact Artifact::open(const std::string& dir) {
  Artifact a;
  a.dir_ = dir;
  const std::string path = dir + "/" + kManifest;
  uint64_t size = 0;
  if (!regular_file(path, &size)) throw Error(dir + " is not an adamk artifact (no " + kManifest + ")");
  if (size > kMaxManifestBytes) throw Error(path + " is " + std::to_string(size) + " bytes, not an adamk manifest");
  try {
    a.manifest_ = json::parse(read_all(path));
  } catch (const json::Error& e) {
    throw Error(path + " is not valid JSON: " + e.what());
  }
  const json::Value& m = a.manifest_;
  if (!m.is_object()) throw Error(path + " has no field 'format'");
  const json::Value* fmt = m.find("format");
  if (fmt && fmt->is_int() && as_int(*fmt) != kManifestFormat) {
    const int64_t f = as_int(*fmt);
    throw Error(path + " is manifest format " + std::to_string(f) + ", made by " +
                (f > kManifestFormat ? "a newer" : "an older") + " adamk; this one reads format " +
                std::to_string(kManifestFormat) + ": recompile the model");
  }
  field(m, "format", "int", path);
  const json::Value& files = field(m, "files", "dict", path);
  const json::Value& target = field(m, "target", "dict", path);
  const json::Value& kernel = field(m, "kernel", "dict", path);
  const json::Value& buffers = field(m, "buffers", "list", path);
  const json::Value& model = field(m, "model", "dict", path);
  const std::string where_t = path + " field 'target'", where_k = path + " field 'kernel'";
  const std::string where_m = path + " field 'model'";
  for (const char* dim : {"hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "max_seq_len",
                          "layers"})     // adamk/artifact.py _SCHEMA: what every artifact's model states
    field(model, dim, "int", where_m);
  a.arch_ = field(target, "arch", "str", where_t).string;
  a.gpu_ = field(target, "gpu", "str", where_t).string;
  const bool sm = a.arch_.size() > 3 && a.arch_.size() < 7 && a.arch_.compare(0, 3, "sm_") == 0 &&
                  a.arch_.find_first_not_of("0123456789", 3) == std::string::npos;
  if (!sm) throw Error(where_t + " field 'arch' is " + quoted(a.arch_) + ", not sm_<number>");
  a.kernel_.name = field(kernel, "name", "str", where_k).string;
  a.kernel_.grid = int(as_int(field(kernel, "grid", "int", where_k)));
  a.kernel_.block_threads = int(as_int(field(kernel, "block_threads", "int", where_k)));
  a.kernel_.smem_bytes = int(as_int(field(kernel, "smem_bytes", "int", where_k)));
  for (const json::Value& arg : field(kernel, "args", "list", where_k).array) {
    if (!arg.is_string()) throw Error(where_k + " field 'args' holds a non-string");
    const auto known = std::find(std::begin(kKernelArgNames), std::end(kKernelArgNames), arg.string);
    if (known == std::end(kKernelArgNames))
      throw Error(where_k + " takes an argument " + quoted(arg.string) +
                  " this runtime does not pass (an artifact of another adamk version?)");
    if (std::find(a.kernel_.args.begin(), a.kernel_.args.end(), arg.string) != a.kernel_.args.end())
      throw Error(where_k + " names its argument " + quoted(arg.string) + " twice");
    a.kernel_.args.push_back(arg.string);
  }
  if (a.kernel_.args.size() != size_t(kKernelArgs))
    throw Error(where_k + " lacks arguments this runtime passes (an artifact of another adamk version?)");
  a.kernel_.max_epoch = uint32_t(as_int(field(kernel, "max_epoch", "int", where_k)));
  if (kernel.find("extra_counters")) a.kernel_.extra_counters = int(as_int(field(kernel, "extra_counters", "int", where_k)));
  a.kernel_.trace_slots = int(field(kernel, "trace_slots", "list", where_k).array.size());
  if (a.kernel_.max_epoch < 1 || a.kernel_.extra_counters < 0)
    throw Error(where_k + " has a bad max_epoch or extra_counters");
  for (const json::Value& t : field(m, "tasks", "list", path).array) {
    if (!t.is_string()) throw Error(path + " field 'tasks' holds a non-string");
    a.tasks_.push_back(t.string);
  }
  const json::Value& counters = field(m, "counters", "list", path);
  for (size_t i = 0; i < counters.array.size(); ++i) {
    const std::string where = path + " counter " + std::to_string(i);
    const json::Value& c = counters.array[i];
    a.counters_.push_back({field(c, "name", "str", where).string, int(as_int(field(c, "index", "int", where)))});
  }
  read_weights(a, m, path);
  // A batch decodes `batch_size` sequences per step, each at its own position (CompileConfig
  // batch_size; a manifest from before batches has none: one). kMaxBatch is adamk/config.py's
  // MAX_BATCH (tests/test_cpp_runtime.py holds the two equal).
  constexpr int64_t kMaxBatch = 16;
  const json::Value* config = m.find("config");
  if (config && config->find("batch_size")) {
    const int64_t batch = as_int(field(*config, "batch_size", "int", path + " field 'config'"));
    if (batch < 1 || batch > kMaxBatch)
      throw Error(path + " field 'config' has a batch_size " + std::to_string(batch) + " outside 1.." +
                  std::to_string(kMaxBatch));
    a.batch_ = int(batch);
  }
  a.whole_model_ = model.find("whole_model") && field(model, "whole_model", "bool", where_m).boolean;
  if (a.whole_model_) {
    a.layers_ = int(as_int(field(model, "layers", "int", where_m)));
    a.vocab_size_ = int(as_int(field(model, "vocab_size", "int", where_m)));
  }
  for (size_t i = 0; i < buffers.array.size(); ++i) {
    const std::string where = path + " buffer " + std::to_string(i);
    const json::Value& b = buffers.array[i];
    Buffer buf;
    buf.name = field(b, "name", "str", where).string;
    buf.role = field(b, "role", "str", where).string;
    buf.dtype = field(b, "dtype", "str", where).string;
    if (buf.dtype != "bf16" && buf.dtype != "f32_tagged" && buf.dtype != "bf16x2_tagged" &&
        buf.dtype != "i32")     // adamk/kinds/base.py DTYPE_BYTES
      throw Error(where + " " + quoted(buf.name) + " has dtype " + quoted(buf.dtype) + ", which this runtime does not know");
    for (const json::Value& d : field(b, "shape", "list", where).array) {
      if (!d.is_int() || d.number <= 0) throw Error(where + " " + quoted(buf.name) + " has a bad shape");
      buf.shape.push_back(as_int(d));
    }
    if (b.find("slots")) buf.slots = as_int(field(b, "slots", "int", where));
    if (buf.slots <= 0) throw Error(where + " " + quoted(buf.name) + " has a bad slot count");
    int64_t bytes = checked_product({buf.slots, 8}, where + " " + quoted(buf.name));     // 8: the widest dtype
    for (int64_t d : buf.shape) bytes = checked_product({bytes, d}, where + " " + quoted(buf.name));
    a.buffers_.push_back(std::move(buf));
  }
  // Every weight is one slot of its buffer, of its shape (what upload_weights stacks and packs), and
  // every buffer's device size is bounded.
  for (const Weight& w : a.weights_) {
    const Buffer* b = nullptr;
    for (const Buffer& buf : a.buffers_)
      if (buf.name == w.buffer) b = &buf;
    if (!b || b->role != "weight" || b->shape != w.shape || w.slot < 0 || w.slot >= b->slots)
      throw Error(path + " weight " + quoted(w.name) + " is not a slot of a weight buffer of its shape");
  }
  for (const Buffer& b : a.buffers_) a.device_bytes(b);

  // Every listed file: a plain name, its sha256 as the manifest says; nothing else in the directory.
  std::vector<std::string> bad;
  std::set<std::string> listed;
  for (const auto& [name, digest] : files.object) {
    if (!plain_name(name))
      throw Error(path + " lists " + quoted(name) + ", which is not a plain file name in the artifact directory");
    if (!digest.is_string()) throw Error(path + " gives no sha256 for " + quoted(name));
    listed.insert(name);
    const std::string f = dir + "/" + name;
    if (!exists(f)) bad.push_back(quoted(name) + " missing");
    else if (!regular_file(f)) bad.push_back(quoted(name) + " not a file");
    else if (sha256_file(f) != digest.string) bad.push_back(quoted(name) + " modified");
  }
  if (DIR* d = opendir(dir.c_str())) {
    std::set<std::string> extra;
    while (const dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != ".." && name != kManifest && !listed.count(name)) extra.insert(name);
    }
    closedir(d);
    for (const std::string& name : extra) bad.push_back(quoted(name) + " unexpected");
  }
  if (!bad.empty()) {
    std::string msg = "artifact " + dir + " fails its sha256 check: ";
    for (size_t i = 0; i < bad.size(); ++i) msg += (i ? ", " : "") + bad[i];
    throw Error(msg);
  }
  return a;
}

std::string Artifact::file(const std::string& name) const {
  const json::Value* files = manifest_.find("files");
  if (!files || !files->find(name)) throw Error("artifact " + dir_ + " has no file " + quoted(name));
  return read_all(dir_ + "/" + name);
}

}  // namespace adamk
