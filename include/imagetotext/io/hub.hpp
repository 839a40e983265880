// Hugging Face hub files: found in the cache transformers and huggingface_hub already fill, downloaded
// into it when missing, laid out exactly as huggingface_hub lays it out:
//
//   <cache>/models--<org>--<name>/blobs/<etag>                   the file's bytes
//   <cache>/models--<org>--<name>/snapshots/<commit>/<filename>  -> ../../blobs/<etag> (relative symlink)
//   <cache>/models--<org>--<name>/refs/<revision>                the commit a branch or tag pointed to
//   <cache>/models--<org>--<name>/.no_exist/<commit>/<filename>  empty: the file is absent at that commit
//   <cache>/.locks/models--<org>--<name>/<etag>.lock             flock(2)-held while a blob is downloaded
//
// Environment, as huggingface_hub reads it: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME, XDG_CACHE_HOME
// (the cache), HF_ENDPOINT (the server), HF_TOKEN / HF_TOKEN_PATH (the token), HF_HUB_OFFLINE.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace imagetotext::io {

struct HubDownloadProgress {
  std::string filename;
  std::uint64_t received = 0;  // bytes of the file on disk so far (a resumed download starts above 0)
  std::uint64_t total = 0;     // 0 when the server did not say
};

struct HubOptions {
  std::filesystem::path cache_dir;      // empty: from the environment (default_hub_cache_dir())
  std::string endpoint;                 // empty: $HF_ENDPOINT, else https://huggingface.co
  std::optional<std::string> token;     // unset: $HF_TOKEN, else the token file; "" sends none
  std::optional<bool> offline;          // unset: $HF_HUB_OFFLINE
  std::chrono::seconds timeout{10};     // to connect, and the longest a transfer may stall
  std::function<void(const HubDownloadProgress&)> on_progress;
};

// The hub cache directory the environment selects, as huggingface_hub computes it.
std::filesystem::path default_hub_cache_dir();

// <cache_dir>/models--<org>--<name>.
std::filesystem::path repo_cache_dir(std::string_view repo_id, const std::filesystem::path& cache_dir);

// The cached copy of `filename` at `revision` (a branch, tag or full commit hash), without any network
// access; nullopt when it is not in the cache.
std::optional<std::filesystem::path> cached_hub_file(std::string_view repo_id, std::string_view filename,
                                                     std::string_view revision,
                                                     const std::filesystem::path& cache_dir);

// True when the cache records (.no_exist, as huggingface_hub writes it) that `filename` does not exist at
// the commit `revision` names in the cache; no network access.
bool cached_as_missing(std::string_view repo_id, std::string_view filename, std::string_view revision,
                       const std::filesystem::path& cache_dir);

// The local path of `filename` in `repo` at `revision`, downloading it into the cache when missing.
// `repo` may also be a local directory, which is used as it is. An interrupted download resumes on the next
// call; a file whose SHA-256 does not match the hub's ETag is deleted. Throws CheckpointError naming the
// repository and the file (not found, access denied, unreachable server, timeout, checksum mismatch,
// offline and not cached); EntryNotFoundError when the file does not exist, which a 404 records in .no_exist
// and which, for a commit hash, offline or with the server unreachable, that record answers without a
// request. Two processes (ours or huggingface_hub's) fetching the same blob take turns on its lock file.
std::filesystem::path hub_file(std::string_view repo, std::string_view filename, std::string_view revision = "main",
                               const HubOptions& options = {});

// A model's safetensors checkpoint at `revision`: `model.safetensors`, or else the index
// `model.safetensors.index.json` and every shard it names, each fetched with hub_file (so from the cache
// when there, downloaded when missing). Returns the path to give load_safetensors: the file or the index.
// `repo` may be a local directory. Throws EntryNotFoundError when the repository has neither file, and
// hub_file's errors otherwise.
std::filesystem::path hub_checkpoint(std::string_view repo, std::string_view revision = "main",
                                     const HubOptions& options = {});

// hub_file for a file a model may lack (generation_config.json, special_tokens_map.json, ...): nullopt when
// the repository or directory does not have it (also when the cache's .no_exist records that, offline);
// every other failure throws as hub_file does.
std::optional<std::filesystem::path> optional_hub_file(std::string_view repo, std::string_view filename,
                                                       std::string_view revision = "main",
                                                       const HubOptions& options = {});

// False when built with IMAGETOTEXT_WITH_DOWNLOADS=OFF: then only cached files and local directories work.
bool downloads_available() noexcept;

}  // namespace imagetotext::io
