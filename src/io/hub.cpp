// The hub cache and downloads (libcurl), following huggingface_hub's file_download.py: a HEAD request on
// {endpoint}/{repo}/resolve/{revision}/{filename} gives the commit (X-Repo-Commit), the blob's ETag
// (X-Linked-Etag for LFS files, which redirect to a CDN) and its size; the blob is written as
// blobs/<etag>.incomplete and renamed only when whole and verified.
#include "imagetotext/io/hub.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <system_error>

#include "imagetotext/core/error.hpp"
#include "imagetotext/core/logging.hpp"
#include "json_file.hpp"

#if IMAGETOTEXT_WITH_DOWNLOADS
#include <curl/curl.h>
#include <openssl/evp.h>
#endif

namespace imagetotext::io {
namespace fs = std::filesystem;

namespace {

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

bool env_flag(const char* name) {
  std::string value = env(name);
  for (char& c : value) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return value == "1" || value == "true" || value == "yes" || value == "on";
}

fs::path hf_home() {
  if (const std::string home = env("HF_HOME"); !home.empty()) return home;
  const std::string xdg = env("XDG_CACHE_HOME");
  return (xdg.empty() ? fs::path(env("HOME")) / ".cache" : fs::path(xdg)) / "huggingface";
}

bool is_commit_hash(std::string_view revision) {
  return revision.size() == 40 &&
         std::all_of(revision.begin(), revision.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

std::string read_first_line(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
  return line;
}

// Writes through a temporary file and a rename, so a reader never sees half a ref; the temporary name
// carries the process id so two processes updating one ref do not write into each other's file.
void write_atomically(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  const fs::path tmp = fmt::format("{}.{}.tmp", path.string(), ::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out) throw CheckpointError(fmt::format("cannot write {}", tmp.string()));
  }
  fs::rename(tmp, path);
}

// snapshots/<commit>/<filename> -> ../../blobs/<etag>, relative as huggingface_hub makes it.
void link_snapshot(const fs::path& pointer, const fs::path& blob) {
  fs::create_directories(pointer.parent_path());
  std::error_code ec;
  fs::remove(pointer, ec);
  fs::create_symlink(fs::relative(blob, pointer.parent_path()), pointer);
}

// The commit `revision` names in the cache: itself when it is a commit hash, else what refs/<revision>
// says; empty when the cache does not know.
std::string cached_commit(const fs::path& repo_dir, std::string_view revision) {
  if (is_commit_hash(revision)) return std::string(revision);
  const fs::path ref = repo_dir / "refs" / fs::path(revision);
  std::error_code ec;
  return fs::is_regular_file(ref, ec) ? read_first_line(ref) : std::string();
}

// huggingface_hub's record that `filename` does not exist at `commit`: an empty file
// <repo_dir>/.no_exist/<commit>/<filename>, written on a 404 for the file and read by try_to_load_from_cache.
fs::path no_exist_marker(const fs::path& repo_dir, std::string_view commit, std::string_view filename) {
  return repo_dir / ".no_exist" / fs::path(commit) / fs::path(filename);
}

// Best effort, as huggingface_hub: a cache we cannot write to only loses the shortcut.
void record_missing(const fs::path& repo_dir, std::string_view commit, std::string_view filename) {
  std::error_code ec;
  const fs::path marker = no_exist_marker(repo_dir, commit, filename);
  fs::create_directories(marker.parent_path(), ec);
  if (!ec && !fs::exists(marker, ec)) std::ofstream(marker).flush();
}

// huggingface_hub's per-blob lock <cache>/.locks/models--org--name/<etag>.lock, held with flock(2) as its
// filelock package holds it, so a download by either library of the same blob waits for the other's
// instead of writing into the same .incomplete file. The kernel drops the lock when a process dies, so a
// crashed downloader never blocks the next one.
class BlobLock {
 public:
  explicit BlobLock(const fs::path& path) {
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    const auto start = std::chrono::steady_clock::now();
    auto next_log = start + std::chrono::seconds(10);
    while (true) {
      fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0664);
      if (fd_ < 0) {
        log_warning("cannot open the download lock {} ({}); downloading without it", path.string(), std::strerror(errno));
        return;
      }
      if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) {
        // filelock may delete a lock file it released: hold the lock only on the file the path still names.
        struct stat held {}, named {};
        if (::fstat(fd_, &held) == 0 && ::stat(path.c_str(), &named) == 0 && held.st_ino == named.st_ino &&
            held.st_dev == named.st_dev) {
          return;
        }
      } else if (errno != EWOULDBLOCK && errno != EINTR) {
        log_warning("cannot lock {} ({}); downloading without it", path.string(), std::strerror(errno));
        return;  // a file system without flock: huggingface_hub falls back to no real lock either
      }
      ::close(fd_);
      fd_ = -1;
      if (std::chrono::steady_clock::now() >= next_log) {
        log_info("waiting for another process downloading the same file (lock {})", path.string());
        next_log += std::chrono::seconds(10);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~BlobLock() {
    if (fd_ >= 0) {
      ::flock(fd_, LOCK_UN);
      ::close(fd_);
    }
  }
  BlobLock(const BlobLock&) = delete;
  BlobLock& operator=(const BlobLock&) = delete;

 private:
  int fd_ = -1;
};

std::optional<fs::path> local_directory_file(std::string_view repo, std::string_view filename) {
  const fs::path dir(repo);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return std::nullopt;
  const fs::path file = dir / fs::path(filename);
  if (!fs::exists(file, ec)) {
    throw EntryNotFoundError(fmt::format("model directory {} has no file {}", dir.string(), filename));
  }
  return file;
}

#if IMAGETOTEXT_WITH_DOWNLOADS

struct CurlGlobal {
  CurlGlobal() { curl_global_init(CURL_GLOBAL_DEFAULT); }
  ~CurlGlobal() { curl_global_cleanup(); }
};

void ensure_curl() { static CurlGlobal global; }

// Percent-encodes everything but unreserved characters (and '/' where a path is meant).
std::string url_quote(std::string_view text, bool keep_slash) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

struct Response {
  long status = 0;
  std::map<std::string, std::string> headers;  // lower-case names; the last response of a redirect chain
  std::string header(const std::string& name) const {
    const auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

size_t collect_header(char* data, size_t size, size_t count, void* user) {
  auto* response = static_cast<Response*>(user);
  std::string_view line(data, size * count);
  if (line.rfind("HTTP/", 0) == 0) response->headers.clear();  // a new response in a redirect chain
  const auto colon = line.find(':');
  if (colon != std::string_view::npos) {
    std::string name(line.substr(0, colon));
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && std::isspace(static_cast<unsigned char>(value.front()))) value.remove_prefix(1);
    while (!value.empty() && std::isspace(static_cast<unsigned char>(value.back()))) value.remove_suffix(1);
    response->headers[name] = std::string(value);
  }
  return size * count;
}

// What a GET writes into: the file, the byte count, and whether a Range request was answered with the
// whole file (200 instead of 206), in which case writing starts over.
struct Transfer {
  std::FILE* file = nullptr;
  std::uint64_t received = 0;
  std::uint64_t total = 0;
  const HubOptions* options = nullptr;
  std::string filename;
  Response response;
};

size_t transfer_header(char* data, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  const std::string_view line(data, size * count);
  if (transfer->received > 0 && line.rfind("HTTP/", 0) == 0 && line.find(" 200") != std::string_view::npos) {
    std::fflush(transfer->file);
    if (ftruncate(fileno(transfer->file), 0) != 0 || std::fseek(transfer->file, 0, SEEK_SET) != 0) return 0;
    transfer->received = 0;
  }
  return collect_header(data, size, count, &transfer->response);
}

size_t write_body(char* data, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  const size_t written = std::fwrite(data, 1, size * count, transfer->file);
  transfer->received += written;
  if (transfer->options->on_progress) {
    transfer->options->on_progress(HubDownloadProgress{transfer->filename, transfer->received, transfer->total});
  }
  return written;  // a short count makes curl stop with CURLE_WRITE_ERROR
}

using CurlHandle = std::unique_ptr<CURL, void (*)(CURL*)>;
using CurlHeaders = std::unique_ptr<curl_slist, void (*)(curl_slist*)>;

CurlHandle new_request(const std::string& url, const HubOptions& options, const std::string& token, curl_slist** headers) {
  ensure_curl();
  CurlHandle curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) throw CheckpointError("cannot start a download: curl_easy_init failed");
  curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl.get(), CURLOPT_USERAGENT, "imagetotext");
  curl_easy_setopt(curl.get(), CURLOPT_CONNECTTIMEOUT, static_cast<long>(options.timeout.count()));
  // A transfer that moves less than one byte per second for `timeout` seconds has stalled.
  curl_easy_setopt(curl.get(), CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_LOW_SPEED_TIME, static_cast<long>(options.timeout.count()));
  curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);
  *headers = curl_slist_append(*headers, "Accept-Encoding: identity");  // sizes must be the real ones
  if (!token.empty()) *headers = curl_slist_append(*headers, ("Authorization: Bearer " + token).c_str());
  curl_easy_setopt(curl.get(), CURLOPT_HTTPHEADER, *headers);
  return curl;
}

std::string resolve_token(const HubOptions& options) {
  if (options.token) return *options.token;
  if (std::string token = env("HF_TOKEN"); !token.empty()) return token;
  const std::string token_path = env("HF_TOKEN_PATH");
  return read_first_line(token_path.empty() ? hf_home() / "token" : fs::path(token_path));
}

std::string sha256_of(const fs::path& path) {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::ifstream in(path, std::ios::binary);
  std::array<char, 1 << 16> buffer;
  while (in.read(buffer.data(), buffer.size()) || in.gcount() > 0) {
    EVP_DigestUpdate(ctx.get(), buffer.data(), static_cast<size_t>(in.gcount()));
  }
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx.get(), digest.data(), &length);
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

// scheme://host[:port] of a URL.
std::string_view origin_of(std::string_view url) {
  const auto scheme_end = url.find("://");
  const auto host_end = url.find('/', scheme_end == std::string_view::npos ? 0 : scheme_end + 3);
  return url.substr(0, host_end);
}

struct FileMetadata {
  std::string commit, etag, location;
  std::uint64_t size = 0;
};

// The HEAD request, following only relative redirects (a renamed repository), as huggingface_hub does; an
// absolute redirect points at the CDN and is where the bytes come from. nullopt: the server is unreachable
// but the file is cached, so the cached copy serves (as in huggingface_hub).
// A 404 for the file itself is recorded in .no_exist as huggingface_hub records it; `known_missing` (such a
// record for the cached commit) answers EntryNotFoundError when the server is unreachable.
std::optional<FileMetadata> head_file(const std::string& endpoint, std::string_view repo, std::string_view filename,
                       std::string_view revision, const HubOptions& options, const std::string& token,
                       const std::optional<fs::path>& cached, bool known_missing, const fs::path& repo_dir) {
  std::string url = fmt::format("{}/{}/resolve/{}/{}", endpoint, repo, url_quote(revision, false),
                                url_quote(filename, true));
  const std::string what = fmt::format("'{}' of {} at revision {}", filename, repo, revision);
  Response response;
  for (int hop = 0; hop < 10; ++hop) {
    curl_slist* raw_headers = nullptr;
    CurlHandle curl = new_request(url, options, token, &raw_headers);
    CurlHeaders headers(raw_headers, curl_slist_free_all);
    curl_easy_setopt(curl.get(), CURLOPT_NOBODY, 1L);
    curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT, static_cast<long>(options.timeout.count()));
    curl_easy_setopt(curl.get(), CURLOPT_HEADERFUNCTION, collect_header);
    curl_easy_setopt(curl.get(), CURLOPT_HEADERDATA, &response);
    const CURLcode code = curl_easy_perform(curl.get());
    if (code != CURLE_OK) {
      if (cached) {
        log_warning("{} unreachable ({}); using the cached {}", endpoint, curl_easy_strerror(code), what);
        return std::nullopt;
      }
      if (known_missing) {
        throw EntryNotFoundError(fmt::format("{} does not exist (recorded in the cache; {} is unreachable)", what,
                                             endpoint));
      }
      throw CheckpointError(fmt::format("cannot reach {} for {} ({}) and it is not in the cache", endpoint, what,
                                        curl_easy_strerror(code)));
    }
    curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &response.status);
    const std::string location = response.header("location");
    if (response.status >= 300 && response.status < 400 && !location.empty() && location.front() == '/') {
      url = std::string(origin_of(endpoint)) + location;
      continue;
    }
    break;
  }
  const std::string error_code = response.header("x-error-code");
  if (response.status == 401 || response.status == 403) {
    throw CheckpointError(fmt::format("access to {} was refused (HTTP {}): the repository is private or gated, or "
                                      "the token is wrong; set HF_TOKEN to a token that may read it",
                                      repo, response.status));
  }
  if (response.status == 404) {
    if (error_code == "RepoNotFound") throw CheckpointError(fmt::format("repository {} was not found on {}", repo, endpoint));
    if (error_code == "RevisionNotFound") {
      throw CheckpointError(fmt::format("revision {} of {} was not found on {}", revision, repo, endpoint));
    }
    if (const std::string commit = response.header("x-repo-commit"); is_commit_hash(commit)) {
      record_missing(repo_dir, commit, filename);
      if (revision != commit) write_atomically(repo_dir / "refs" / fs::path(revision), commit);
    }
    throw EntryNotFoundError(fmt::format("{} was not found on {}", what, endpoint));
  }
  if (response.status >= 400) throw CheckpointError(fmt::format("{} answered HTTP {} for {}", endpoint, response.status, what));

  FileMetadata metadata;
  metadata.commit = response.header("x-repo-commit");
  std::string etag = response.header("x-linked-etag");
  if (etag.empty()) etag = response.header("etag");
  if (etag.rfind("W/", 0) == 0) etag.erase(0, 2);
  std::erase(etag, '"');
  metadata.etag = etag;
  const bool redirect = response.status >= 300 && response.status < 400;
  const std::string size = !response.header("x-linked-size").empty() ? response.header("x-linked-size")
                           : redirect                                 ? std::string()
                                                                      : response.header("content-length");
  metadata.size = size.empty() ? 0 : std::stoull(size);
  metadata.location = redirect ? response.header("location") : url;
  if (metadata.commit.empty() || metadata.etag.empty() || metadata.etag.find('/') != std::string::npos) {
    throw CheckpointError(fmt::format("{} sent no usable X-Repo-Commit/ETag for {}: is HF_ENDPOINT a hub?", endpoint, what));
  }
  return metadata;
}

// GETs `metadata.location` into `incomplete`, resuming from its current size.
void download_blob(const FileMetadata& metadata, const fs::path& incomplete, std::string_view filename,
                   const HubOptions& options, const std::string& token) {
  std::error_code ec;
  std::uint64_t offset = fs::exists(incomplete, ec) ? fs::file_size(incomplete) : 0;
  if (metadata.size != 0 && offset > metadata.size) {
    fs::remove(incomplete);
    offset = 0;
  }
  if (metadata.size != 0 && offset == metadata.size) return;

  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(incomplete.c_str(), offset ? "ab" : "wb"), std::fclose);
  if (!file) throw CheckpointError(fmt::format("cannot write {}", incomplete.string()));
  Transfer transfer{file.get(), offset, metadata.size, &options, std::string(filename), {}};
  curl_slist* raw_headers = nullptr;
  if (offset > 0) {
    raw_headers = curl_slist_append(raw_headers, fmt::format("Range: bytes={}-", offset).c_str());
    log_info("resuming {} at byte {}", filename, offset);
  }
  CurlHandle curl = new_request(metadata.location, options, token, &raw_headers);
  CurlHeaders headers(raw_headers, curl_slist_free_all);
  curl_easy_setopt(curl.get(), CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_HEADERFUNCTION, transfer_header);
  curl_easy_setopt(curl.get(), CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, write_body);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &transfer);
  const CURLcode code = curl_easy_perform(curl.get());
  std::fflush(file.get());
  if (code != CURLE_OK) {
    long status = 0;
    curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &status);
    throw CheckpointError(fmt::format("download of '{}' stopped after {} of {} bytes ({}{}); the partial file {} is kept "
                                      "and the next attempt resumes it",
                                      filename, transfer.received, metadata.size, curl_easy_strerror(code),
                                      status >= 400 ? fmt::format(", HTTP {}", status) : "", incomplete.string()));
  }
}

#endif  // IMAGETOTEXT_WITH_DOWNLOADS

}  // namespace

bool downloads_available() noexcept { return IMAGETOTEXT_WITH_DOWNLOADS != 0; }

fs::path default_hub_cache_dir() {
  if (const std::string dir = env("HF_HUB_CACHE"); !dir.empty()) return dir;
  if (const std::string dir = env("HUGGINGFACE_HUB_CACHE"); !dir.empty()) return dir;
  return hf_home() / "hub";
}

fs::path repo_cache_dir(std::string_view repo_id, const fs::path& cache_dir) {
  std::string folder = "models--";
  for (char c : repo_id) folder += c == '/' ? std::string("--") : std::string(1, c);
  return cache_dir / folder;
}

std::optional<fs::path> cached_hub_file(std::string_view repo_id, std::string_view filename, std::string_view revision,
                                        const fs::path& cache_dir) {
  const fs::path repo_dir = repo_cache_dir(repo_id, cache_dir);
  const std::string commit = cached_commit(repo_dir, revision);
  if (commit.empty()) return std::nullopt;
  const fs::path file = repo_dir / "snapshots" / commit / fs::path(filename);
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::nullopt;  // follows the symlink: a dangling one is not a file
  return file;
}

bool cached_as_missing(std::string_view repo_id, std::string_view filename, std::string_view revision,
                       const fs::path& cache_dir) {
  const fs::path repo_dir = repo_cache_dir(repo_id, cache_dir);
  const std::string commit = cached_commit(repo_dir, revision);
  std::error_code ec;
  return !commit.empty() && fs::is_regular_file(no_exist_marker(repo_dir, commit, filename), ec);
}

fs::path hub_file(std::string_view repo, std::string_view filename, std::string_view revision,
                  const HubOptions& options) {
  if (auto local = local_directory_file(repo, filename)) return *local;
  const fs::path cache_dir = options.cache_dir.empty() ? default_hub_cache_dir() : options.cache_dir;
  const std::optional<fs::path> cached = cached_hub_file(repo, filename, revision, cache_dir);
  const bool known_missing = !cached && cached_as_missing(repo, filename, revision, cache_dir);
  const auto missing = [&] {
    return EntryNotFoundError(fmt::format("'{}' of {} at revision {} does not exist (recorded in the cache {})", filename,
                                          repo, revision, cache_dir.string()));
  };
  // A commit hash names fixed content: what the cache holds for it, or knows to be absent, needs no request
  // (huggingface_hub's shortcut).
  if (is_commit_hash(revision)) {
    if (cached) return *cached;
    if (known_missing) throw missing();
  }
  const bool offline = options.offline.value_or(env_flag("HF_HUB_OFFLINE"));
  if (offline || !downloads_available()) {
    if (cached) return *cached;
    if (known_missing) throw missing();
    throw CheckpointError(fmt::format("'{}' of {} at revision {} is not in the cache {} and {}", filename, repo, revision,
                                      cache_dir.string(),
                                      offline ? "HF_HUB_OFFLINE forbids downloading it"
                                              : "this build cannot download (IMAGETOTEXT_WITH_DOWNLOADS=OFF)"));
  }
#if IMAGETOTEXT_WITH_DOWNLOADS
  std::string endpoint = options.endpoint.empty() ? env("HF_ENDPOINT") : options.endpoint;
  if (endpoint.empty()) endpoint = "https://huggingface.co";
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  const std::string token = resolve_token(options);

  const fs::path repo_dir = repo_cache_dir(repo, cache_dir);
  const std::optional<FileMetadata> found =
      head_file(endpoint, repo, filename, revision, options, token, cached, known_missing, repo_dir);
  if (!found) return *cached;
  const FileMetadata& metadata = *found;

  const fs::path blob = repo_dir / "blobs" / metadata.etag;
  const fs::path pointer = repo_dir / "snapshots" / metadata.commit / fs::path(filename);
  std::error_code ec;
  if (fs::exists(pointer, ec)) {  // already linked (by us or huggingface_hub): only the ref may be new
    if (revision != metadata.commit) write_atomically(repo_dir / "refs" / fs::path(revision), metadata.commit);
    return pointer;
  }
  const BlobLock lock(cache_dir / ".locks" / repo_dir.filename() / (metadata.etag + ".lock"));
  if (!fs::exists(blob, ec)) {  // checked again under the lock: another process may just have finished it
    fs::create_directories(blob.parent_path());
    const fs::path incomplete = blob.string() + ".incomplete";
    // The token stays on the hub: a CDN redirect gets a signed URL and no Authorization header.
    const bool on_hub = origin_of(metadata.location) == origin_of(endpoint);
    download_blob(metadata, incomplete, filename, options, on_hub ? token : std::string());
    const std::uint64_t size = fs::file_size(incomplete);
    if (metadata.size != 0 && size != metadata.size) {
      fs::remove(incomplete, ec);
      throw CheckpointError(fmt::format("download of '{}' from {} gave {} bytes where {} were announced; deleted it",
                                        filename, repo, size, metadata.size));
    }
    // An LFS file's ETag is the SHA-256 of its content; a small file's is a git blob hash, not checked.
    if (metadata.etag.size() == 64) {
      if (const std::string actual = sha256_of(incomplete); actual != metadata.etag) {
        fs::remove(incomplete, ec);
        throw CheckpointError(fmt::format("download of '{}' from {} is corrupt: its SHA-256 is {}, the hub says {}; "
                                          "deleted it",
                                          filename, repo, actual, metadata.etag));
      }
    }
    fs::rename(incomplete, blob);
  }
  link_snapshot(pointer, blob);
  if (revision != metadata.commit) write_atomically(repo_dir / "refs" / fs::path(revision), metadata.commit);
  return pointer;
#else
  return *cached;  // unreachable: the offline branch above returned or threw
#endif
}

std::optional<fs::path> optional_hub_file(std::string_view repo, std::string_view filename, std::string_view revision,
                                          const HubOptions& options) {
  try {
    return hub_file(repo, filename, revision, options);
  } catch (const EntryNotFoundError&) {
    return std::nullopt;
  }
}

fs::path hub_checkpoint(std::string_view repo, std::string_view revision, const HubOptions& options) {
  constexpr std::string_view kSingleFile = "model.safetensors";
  constexpr std::string_view kIndex = "model.safetensors.index.json";
  // A sharded checkpoint already in the cache must not cost a request for the single file first (and must
  // work offline, where that request would fail as "not cached" rather than "not found").
  std::error_code ec;
  const fs::path cache_dir = options.cache_dir.empty() ? default_hub_cache_dir() : options.cache_dir;
  const bool cached_sharded = !fs::is_directory(fs::path(repo), ec) &&
                              !cached_hub_file(repo, kSingleFile, revision, cache_dir) &&
                              cached_hub_file(repo, kIndex, revision, cache_dir);
  if (!cached_sharded) {
    if (auto single = optional_hub_file(repo, kSingleFile, revision, options)) return *single;
  }
  const std::optional<fs::path> index = optional_hub_file(repo, kIndex, revision, options);
  if (!index) {
    throw EntryNotFoundError(fmt::format("{} (revision {}) has no {} and no {}", repo, revision, kSingleFile, kIndex));
  }
  const nlohmann::json parsed = detail::read_json_file(*index, "checkpoint index");
  const auto weight_map = parsed.is_object() ? parsed.find("weight_map") : parsed.end();
  if (weight_map == parsed.end() || !weight_map->is_object()) {
    throw CheckpointError(fmt::format("checkpoint index {} has no weight_map object", index->string()));
  }
  std::set<std::string> shards;
  for (const auto& [name, shard] : weight_map->items()) {
    if (!shard.is_string()) {
      throw CheckpointError(fmt::format("checkpoint index {}: the shard of '{}' is not a string", index->string(), name));
    }
    shards.insert(shard.get<std::string>());
  }
  for (const std::string& shard : shards) hub_file(repo, shard, revision, options);
  return *index;
}

}  // namespace imagetotext::io
