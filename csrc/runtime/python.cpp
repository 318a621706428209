// python.cpp — adamk._runtime: the C++ runtime for Python (pybind11, built by CMake through
// scikit-build-core as part of `pip install .`). Its errors are adamk.errors.AdamkError, one line each.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "artifact.hpp"
#include "driver.hpp"
#include "session.hpp"
#include "weights.hpp"

namespace py = pybind11;

namespace {

// The Python class of a failure: what the kernel reported as adamk.errors' KernelError kinds (as
// adamk/runtime/decode.py raises them), everything else AdamkError (the CLI prints it as one line).
const char* error_class(const adamk::Error& e) {
  const auto* k = dynamic_cast<const adamk::KernelError*>(&e);
  if (!k) return "AdamkError";
  switch (k->reason) {
    case adamk::kSmemOverflow: return "KernelSharedMemoryError";
    case adamk::kWaitTimeout:
    case adamk::kPollTimeout: return "KernelTimeoutError";
    default: return "AdamkError";
  }
}

// Runs `f` (without the GIL if `release`: it may wait for the GPU), turning the runtime's errors
// into Python's.
template <typename F>
auto translated(F f, bool release = false) {
  try {
    if (release) {
      py::gil_scoped_release unlocked;
      return f();
    }
    return f();
  } catch (const adamk::Error& e) {
    const py::object error = py::module_::import("adamk.errors").attr(error_class(e));
    PyErr_SetString(error.ptr(), e.what());
    throw py::error_already_set();
  }
}

adamk::CUstream stream_of(uint64_t handle) { return reinterpret_cast<adamk::CUstream>(handle); }

}  // namespace

PYBIND11_MODULE(_runtime, m) {
  m.doc() = "The adamk C++ runtime (csrc/runtime): artifacts read and checked as the Python runtime does.";
  m.attr("MANIFEST_FORMAT") = adamk::kManifestFormat;
  py::tuple args(adamk::kKernelArgs);
  for (int i = 0; i < adamk::kKernelArgs; ++i) args[size_t(i)] = adamk::kKernelArgNames[i];
  m.attr("KERNEL_ARGS") = args;

  py::class_<adamk::Buffer>(m, "Buffer")
      .def_readonly("name", &adamk::Buffer::name)
      .def_readonly("role", &adamk::Buffer::role)
      .def_readonly("dtype", &adamk::Buffer::dtype)
      .def_readonly("shape", &adamk::Buffer::shape)
      .def_readonly("slots", &adamk::Buffer::slots)
      .def_property_readonly("nbytes", &adamk::Buffer::bytes);

  py::class_<adamk::Artifact>(m, "Artifact")
      .def_static("open", [](const std::string& dir) { return translated([&] { return adamk::Artifact::open(dir); }); },
                  py::arg("dir"), "Read the artifact in `dir`, checking its manifest and every file's sha256.")
      .def_property_readonly("arch", &adamk::Artifact::arch)
      .def_property_readonly("gpu", &adamk::Artifact::gpu)
      .def_property_readonly("whole_model", &adamk::Artifact::whole_model)
      .def_property_readonly("batch", &adamk::Artifact::batch)
      .def_property_readonly("buffers", &adamk::Artifact::buffers)
      .def_property_readonly("kernel", [](const adamk::Artifact& a) {
        const adamk::Kernel& k = a.kernel();
        py::dict d;
        d["name"] = k.name;
        d["grid"] = k.grid;
        d["block_threads"] = k.block_threads;
        d["smem_bytes"] = k.smem_bytes;
        d["args"] = k.args;
        return d;
      })
      .def("module_file", [](const adamk::Artifact& a, int ordinal) {
        return translated([&] { return adamk::Driver::get().module_file(a, ordinal); });
      }, py::arg("device") = 0, "The file GPU `device` loads (loads the CUDA driver).");

  // A checkpoint as upload_weights reads it: name -> (safetensors dtype, shape, bytes), for the CPU tests.
  m.def("read_checkpoint", [](const std::string& path) {
    const adamk::Checkpoint c = translated([&] { return adamk::Checkpoint::open(path); });
    py::dict out;
    for (const auto& [name, t] : c.tensors())
      out[py::str(name)] = py::make_tuple(t.dtype, t.shape, py::bytes(reinterpret_cast<const char*>(t.data), t.bytes));
    return out;
  });
  // weight_words's checks of a checkpoint against an artifact (no GPU), for the CPU tests.
  m.def("check_weights", [](const std::string& artifact_dir, const std::string& path) {
    translated([&] {
      adamk::weight_words(adamk::Artifact::open(artifact_dir), adamk::Checkpoint::open(path));
    });
  });
  m.def("pack_pages", [](const std::vector<py::bytes>& sources, int64_t n, int64_t k, int64_t page_rows,
                         int64_t page_cols, int64_t k_chunk, int64_t chunk_pages) {
    if (n < 1 || k < 1 || page_rows < 1 || page_cols < 1 || k_chunk < 1 || chunk_pages < 1 ||
        chunk_pages * page_cols < k_chunk)
      throw py::value_error("pack_pages takes positive sizes, chunk_pages * page_cols >= k_chunk");
    const int64_t bytes = translated([&] {
      const int64_t rows = (n + page_rows - 1) / page_rows * page_rows, pages = (k + k_chunk - 1) / k_chunk * chunk_pages;
      adamk::checked_product({rows, pages, page_cols, int64_t(sources.size()), 2}, "the packed weights");
      return adamk::checked_product({n, k, 2}, "a source");
    });
    std::vector<std::string> held;
    std::vector<const uint16_t*> words;
    for (const py::bytes& b : sources) {
      held.push_back(std::string(b));
      if (int64_t(held.back().size()) != bytes) throw py::value_error("each source is n x k bf16 words");
    }
    for (const std::string& h : held) words.push_back(reinterpret_cast<const uint16_t*>(h.data()));
    const std::vector<uint16_t> out = adamk::pack_pages(words, n, k, page_rows, page_cols, k_chunk, chunk_pages);
    return py::bytes(reinterpret_cast<const char*>(out.data()), 2 * out.size());
  }, "weights.hpp pack_pages: [n, k] bf16 sources (bytes) page by page, as the device streams them.");

  using adamk::Session;
  py::class_<Session>(m, "Session", "An artifact's kernel on one GPU (csrc/runtime/session.hpp): buffers bound "
                                    "by name, the launch state owned, cooperative launches on a caller's stream.")
      .def(py::init([](const std::string& dir, int device, double timeout_s) {
             return translated([&] { return std::make_unique<Session>(adamk::Artifact::open(dir), device, timeout_s); });
           }), py::arg("dir"), py::arg("device") = 0, py::arg("timeout_s") = 2.0)
      .def_property_readonly("loaded_from", &Session::loaded_from)
      .def_property_readonly("max_seq_len", &Session::max_seq_len)
      .def_property_readonly("batch", &Session::batch)
      .def_property_readonly("epoch", &Session::epoch)
      .def_property("max_epoch", &Session::max_epoch,
                    [](Session& s, uint32_t e) { translated([&] { s.set_max_epoch(e); }); })
      .def_property("timeout_s", &Session::timeout_s,
                    [](Session& s, double t) { translated([&] { s.set_timeout_s(t); }); })
      .def("bind", [](Session& s, const std::string& name, uint64_t ptr, uint64_t bytes) {
             translated([&] { s.bind(name, ptr, bytes); });
           }, py::arg("name"), py::arg("ptr"), py::arg("nbytes"), "Buffer `name` lives at device address `ptr`.")
      .def("buffer", [](Session& s, const std::string& name) { return translated([&] { return s.buffer(name); }); },
           py::arg("name"), "The device address of buffer `name` (allocated now if unbound).")
      .def("launch", [](Session& s, int pos, uint64_t stream) {
             translated([&] { s.launch(pos, stream_of(stream)); }, true);
           }, py::arg("pos"), py::arg("stream") = 0, "Enqueue one step on `stream` (a CUstream handle).")
      .def("advance", [](Session& s) { translated([&] { s.advance(); }, true); },
           "Count one launch (a replay of a captured enqueue); zeroes the state at the epoch wrap.")
      .def("enqueue", [](Session& s, int pos, uint64_t stream) {
             translated([&] { s.enqueue(pos, stream_of(stream)); }, true);
           }, py::arg("pos"), py::arg("stream") = 0, "Enqueue the kernel without counting it (a graph capture).")
      .def("start", [](Session& s, const std::vector<int>& tokens, const std::vector<int>& positions, uint64_t stream) {
             translated([&] { s.start(tokens, positions, stream_of(stream)); }, true);
           }, py::arg("tokens"), py::arg("positions"), py::arg("stream") = 0,
           "A whole model: the next launch decodes tokens[b] at positions[b], one per sequence.")
      .def("set_positions", [](Session& s, const std::vector<int>& positions, uint64_t stream) {
             translated([&] { s.set_positions(positions, stream_of(stream)); }, true);
           }, py::arg("positions"), py::arg("stream") = 0, "A batched layer: one position per sequence.")
      .def("prepare", [](Session& s) { translated([&] { s.prepare(); }, true); })
      .def("check", [](Session& s) { translated([&] { s.check(); }, true); },
           "Wait for the GPU; raise what the kernel reported.")
      .def("reset", [](Session& s) { translated([&] { s.reset(); }, true); })
      .def("upload_weights", [](Session& s, const std::string& path) {
             translated([&] { adamk::upload_weights(s, adamk::Checkpoint::open(path)); }, true);
           }, py::arg("path"), "Every weight from a safetensors file or checkpoint directory (weights.hpp).")
      .def("trace", [](Session& s) { return translated([&] { return s.trace(); }, true); });
}
