// Python face of text/tokenizer.hpp: imagetotext.Tokenizer, with the tokenizers library's method names.
// Encoding and decoding run with the GIL released.
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include "bindings.hpp"
#include "imagetotext/text/tokenizer.hpp"

namespace py = pybind11;

namespace imagetotext::python {

void bind_tokenizer(py::module_& m) {
  py::class_<text::Tokenizer>(m, "Tokenizer",
                              "A byte-level BPE tokenizer read from a tokenizer.json; encodes and decodes exactly "
                              "as the tokenizers library does.")
      .def_static("from_file", &text::Tokenizer::from_file, py::arg("path"), py::call_guard<py::gil_scoped_release>(),
                  "Read a tokenizer.json. Raises CheckpointError naming the file (and the field) when it is "
                  "missing, invalid, or uses a component this library does not implement.")
      .def(
          "encode",
          [](const text::Tokenizer& tokenizer, const std::string& text, bool add_special_tokens) {
            py::gil_scoped_release release;
            return tokenizer.encode(text, add_special_tokens);
          },
          py::arg("text"), py::arg("add_special_tokens") = false,
          "The token ids of text. Added tokens in the text are always matched; add_special_tokens adds the "
          "post-processor's tokens (e.g. BART's <s> and </s>).")
      .def(
          "decode",
          [](const text::Tokenizer& tokenizer, const std::vector<std::int64_t>& ids, bool skip_special_tokens) {
            py::gil_scoped_release release;
            return tokenizer.decode(ids, skip_special_tokens);
          },
          py::arg("ids"), py::arg("skip_special_tokens") = false,
          "The text of ids; unknown ids are skipped, and invalid UTF-8 becomes U+FFFD.")
      .def("token_to_id", &text::Tokenizer::token_to_id, py::arg("token"), "The id of a token, or None.")
      .def("id_to_token", &text::Tokenizer::id_to_token, py::arg("id"), "The token of an id, or None.")
      .def_property_readonly("vocab_size", &text::Tokenizer::vocab_size,
                             "How many distinct tokens, added tokens included.")
      .def_property_readonly("path", &text::Tokenizer::path, "The tokenizer.json it was read from.")
      .def("__repr__", [](const text::Tokenizer& tokenizer) {
        return "<imagetotext.Tokenizer " + tokenizer.path().string() + " (" + std::to_string(tokenizer.vocab_size()) +
               " tokens)>";
      });
}

}  // namespace imagetotext::python
