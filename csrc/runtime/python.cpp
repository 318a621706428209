// python.cpp — adamk._runtime: the C++ runtime for Python (pybind11, built by CMake through
// scikit-build-core as part of `pip install .`). Its errors are adamk.errors.AdamkError, one line each.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "artifact.hpp"
#include "driver.hpp"

namespace py = pybind11;

namespace {

// Runs `f`, turning the runtime's Error into adamk.errors.AdamkError (the CLI prints it as one line).
template <typename F>
auto translated(F f) {
  try {
    return f();
  } catch (const adamk::Error& e) {
    const py::object error = py::module_::import("adamk.errors").attr("AdamkError");
    PyErr_SetString(error.ptr(), e.what());
    throw py::error_already_set();
  }
}

}  // namespace

PYBIND11_MODULE(_runtime, m) {
  m.doc() = "The adamk C++ runtime (csrc/runtime): artifacts read and checked as the Python runtime does.";
  m.attr("MANIFEST_FORMAT") = adamk::kManifestFormat;

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
}
