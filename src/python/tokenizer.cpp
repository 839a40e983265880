// Python face of text/tokenizer.hpp: imagetotext.Tokenizer, with the tokenizers library's method names.
// Encoding and decoding run with the GIL released.
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include "bindings.hpp"
#include "imagetotext/io/hub.hpp"
#include "imagetotext/text/tokenizer.hpp"

namespace py = pybind11;

namespace imagetotext::python {

void bind_tokenizer(py::module_& m) {
  py::class_<text::Tokenizer> tokenizer(m, "Tokenizer",
                              "A byte-level BPE tokenizer read from a tokenizer.json; encodes and decodes exactly "
                              "as the tokenizers library does.");
  tokenizer
      .def_static("from_file", &text::Tokenizer::from_file, py::arg("path"), py::call_guard<py::gil_scoped_release>(),
                  "Read a tokenizer.json. Raises CheckpointError naming the file (and the field) when it is "
                  "missing, invalid, or uses a component this library does not implement.")
      .def_static(
          "from_pretrained",
          [](const std::string& name_or_path, const std::string& revision, std::optional<std::filesystem::path> cache_dir,
             std::optional<std::string> token, std::optional<bool> offline) {
            io::HubOptions options;
            if (cache_dir) options.cache_dir = *cache_dir;
            options.token = token;
            options.offline = offline;
            py::gil_scoped_release release;
            return text::Tokenizer::from_pretrained(name_or_path, revision, options);
          },
          py::arg("name_or_path"), py::arg("revision") = "main", py::arg("cache_dir") = py::none(),
          py::arg("token") = py::none(), py::arg("offline") = py::none(),
          "Read a model's tokenizer as transformers' AutoTokenizer does: tokenizer.json with tokenizer_config.json "
          "and special_tokens_map.json where present, from a local directory or a hub repository (cached, "
          "downloaded when missing). Raises CheckpointError naming the file and the field.")
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
      .def_property_readonly(
          "tokenizer_class", [](const text::Tokenizer& tokenizer) { return tokenizer.config().tokenizer_class; },
          "transformers' tokenizer class for it (from tokenizer_config.json; TokenizersBackend by default).")
      .def_property_readonly(
          "special_tokens_map",
          [](const text::Tokenizer& tokenizer) {
            py::dict named;
            for (const text::NamedSpecialToken& token : tokenizer.config().special_tokens) named[py::str(token.name)] = token.content;
            return named;
          },
          "The named special tokens (bos_token, ..., and a model's own such as image_token), as transformers' "
          "special_tokens_map.")
      .def_property_readonly(
          "extra_special_tokens", [](const text::Tokenizer& tokenizer) { return tokenizer.config().extra_special_tokens; },
          "additional_special_tokens / extra_special_tokens of the tokenizer config.")
      .def_property_readonly(
          "model_max_length",
          [](const text::Tokenizer& tokenizer) -> py::int_ {
            if (const auto length = tokenizer.config().model_max_length) return py::int_(*length);
            return py::int_(py::float_(1e30));  // transformers' VERY_LARGE_INTEGER, int(1e30)
          },
          "The longest input the model takes (transformers' int(1e30) when unlimited); encode never truncates.")
      .def_property_readonly(
          "clean_up_tokenization_spaces",
          [](const text::Tokenizer& tokenizer) { return tokenizer.config().clean_up_tokenization_spaces; },
          "The config's flag; decode applies the clean-up only with "
          "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output too, as transformers does.")
      .def("__repr__", [](const text::Tokenizer& tokenizer) {
        return "<imagetotext.Tokenizer " + tokenizer.path().string() + " (" + std::to_string(tokenizer.vocab_size()) +
               " tokens)>";
      });
  // transformers' bos_token, bos_token_id, ... for each standard name.
  for (const char* name : {"bos", "eos", "unk", "sep", "pad", "cls", "mask"}) {
    const std::string key = std::string(name) + "_token";
    tokenizer.def_property_readonly(
        key.c_str(), [key](const text::Tokenizer& t) { return t.special_token(key); },
        ("The config's " + key + " (None when it names none; from_file: None).").c_str());
    tokenizer.def_property_readonly(
        (key + "_id").c_str(),
        [key](const text::Tokenizer& t) -> std::optional<std::int64_t> {
          const auto content = t.special_token(key);
          return content ? t.token_to_id(*content) : std::nullopt;
        },
        ("The id of " + key + ", or None.").c_str());
  }
}

}  // namespace imagetotext::python
