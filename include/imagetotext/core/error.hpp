// Typed errors. Every error names the path, model or tensor it is about, so a user can act on the
// message alone; the Python bindings map each type onto the matching Python exception.
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string>

namespace imagetotext {

// Base of every error this library throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A file or directory the caller named does not exist (Python: FileNotFoundError).
class FileNotFoundError : public Error {
 public:
  explicit FileNotFoundError(const std::filesystem::path& path, const std::string& reason = "file not found")
      : Error(reason + ": " + path.string()), path_(path), reason_(reason) {}
  const std::filesystem::path& path() const noexcept { return path_; }
  const std::string& reason() const noexcept { return reason_; }

 private:
  std::filesystem::path path_;
  std::string reason_;
};

// A file exists but is not an image we can decode: empty, truncated, corrupt, an unknown format, or
// larger than the pixel limit (Python: ValueError).
class ImageError : public Error {
 public:
  ImageError(const std::filesystem::path& path, const std::string& why)
      : Error("cannot read image " + path.string() + ": " + why), path_(path) {}
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
};

// A model name that is not in the registry (Python: ValueError); the message lists the valid names.
class UnknownModelError : public Error {
 public:
  using Error::Error;
};

// A model name that is registered but whose family is not built yet (Python: NotImplementedError).
class ModelNotImplementedError : public Error {
 public:
  using Error::Error;
};

// A checkpoint that is missing, truncated or does not match the model (Python: RuntimeError subclass).
class CheckpointError : public Error {
 public:
  using Error::Error;
};

// A file the repository or model directory does not have (HTTP 404 for the file itself, or a local
// directory without it): callers use it to tell an optional file that is absent from a real failure.
class EntryNotFoundError : public CheckpointError {
 public:
  using CheckpointError::CheckpointError;
};

// A device that is unavailable or out of memory (Python: RuntimeError subclass).
class DeviceError : public Error {
 public:
  using Error::Error;
};

// An argument with the wrong value, dtype, device or shape (Python: ValueError).
class InvalidArgumentError : public Error {
 public:
  using Error::Error;
};

}  // namespace imagetotext
