#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include "bindings.hpp"
#include "imagetotext/io/hub.hpp"

namespace py = pybind11;

namespace imagetotext::python {

void bind_hub(py::module_& m) {
  m.def("default_hub_cache_dir", &io::default_hub_cache_dir,
        "The hub cache directory the environment selects (HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME).");
  m.def("downloads_available", &io::downloads_available, "Whether this build can download from the hub.");
  m.def("cached_hub_file", &io::cached_hub_file, py::arg("repo_id"), py::arg("filename"), py::arg("revision") = "main",
        py::arg("cache_dir"), "The cached path of a hub file, or None; never touches the network.");
  m.def("cached_as_missing", &io::cached_as_missing, py::arg("repo_id"), py::arg("filename"),
        py::arg("revision") = "main", py::arg("cache_dir"),
        "Whether the cache records (.no_exist) that a hub file does not exist; never touches the network.");
  m.def(
      "hub_file",
      [](const std::string& repo, const std::string& filename, const std::string& revision,
         std::optional<std::filesystem::path> cache_dir, std::optional<std::string> endpoint,
         std::optional<std::string> token, std::optional<bool> offline, double timeout,
         std::optional<std::function<void(std::string, std::uint64_t, std::uint64_t)>> progress,
         bool optional) -> std::optional<std::filesystem::path> {
        io::HubOptions options;
        if (cache_dir) options.cache_dir = *cache_dir;
        if (endpoint) options.endpoint = *endpoint;
        options.token = token;
        options.offline = offline;
        options.timeout = std::chrono::seconds(std::max<int64_t>(1, static_cast<int64_t>(timeout + 0.5)));
        if (progress) {
          options.on_progress = [callback = *progress](const io::HubDownloadProgress& p) {
            py::gil_scoped_acquire acquire;  // called from the download, which runs without the GIL
            callback(p.filename, p.received, p.total);
          };
        }
        py::gil_scoped_release release;
        if (optional) return io::optional_hub_file(repo, filename, revision, options);
        return io::hub_file(repo, filename, revision, options);
      },
      py::arg("repo_id"), py::arg("filename"), py::arg("revision") = "main", py::arg("cache_dir") = py::none(),
      py::arg("endpoint") = py::none(), py::arg("token") = py::none(), py::arg("offline") = py::none(),
      py::arg("timeout") = 10.0, py::arg("progress") = py::none(), py::arg("optional") = false,
      "The local path of a hub file, downloaded into the cache when missing (see imagetotext.hub); with "
      "optional=True, None when the repository does not have the file.");
}

}  // namespace imagetotext::python
