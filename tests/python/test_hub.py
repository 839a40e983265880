"""Hub downloads and the cache, against a fake hub on 127.0.0.1 and against huggingface_hub itself.

The fake hub speaks the hub's URL layout and headers: HEAD/GET {repo}/resolve/{revision}/{file} answer
with X-Repo-Commit and an ETag; an LFS file redirects to /cdn/<sha256> with X-Linked-Etag and
X-Linked-Size, and the CDN honours Range requests. Each test can make it cut a transfer, corrupt bytes,
refuse access or stall.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import imagetotext
from imagetotext.hub import cached_as_missing, hf_hub_download, optional_hf_hub_download, try_to_load_from_cache

pytestmark = pytest.mark.skipif(not imagetotext._C.downloads_available(), reason="built without downloads")

REPO = "test-org/tiny-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CONFIG = b'{"model_type": "test"}\n'
WEIGHTS = os.urandom(300_000)  # an "LFS" file: served from the CDN path, checked by SHA-256


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self):
        self.files = {"config.json": (CONFIG, False), "model.safetensors": (WEIGHTS, True)}
        self.mode = "normal"  # normal | cut | corrupt | stall | private | slow
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.token = "secret-token"
        self.cdn_authorization: list[str | None] = []


def make_handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.answer(body=False)

        def do_GET(self):
            self.answer(body=True)

        def send(self, status, headers, data=b"", body=True):
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if body and data:
                self.wfile.write(data)

        def answer(self, body):
            hub.requests.append((self.command, self.path, self.headers.get("Range")))
            if self.path.startswith("/cdn/"):
                return self.cdn(body)
            prefix = f"/{REPO}/resolve/"
            if not self.path.startswith(prefix):
                return self.send(404, {"X-Error-Code": "RepoNotFound", "Content-Length": "0"})
            revision, _, filename = self.path[len(prefix):].partition("/")
            if hub.mode == "private" and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self.send(401, {"Content-Length": "0"})
            if revision not in ("main", COMMIT):
                return self.send(404, {"X-Error-Code": "RevisionNotFound", "Content-Length": "0"})
            if filename not in hub.files:  # the hub names the commit it looked in
                return self.send(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT, "Content-Length": "0"})
            data, lfs = hub.files[filename]
            if lfs:
                sha = hashlib.sha256(data).hexdigest()
                # Another host name for the same server, as the hub's CDN is another host.
                cdn = self.headers["Host"].replace("127.0.0.1", "localhost")
                return self.send(302, {"Location": f"http://{cdn}/cdn/{sha}", "X-Repo-Commit": COMMIT,
                                       "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                                       "ETag": f'"{git_blob_sha1(data)}"', "Content-Length": "0"})
            self.send(200, {"X-Repo-Commit": COMMIT, "ETag": f'"{git_blob_sha1(data)}"',
                            "Content-Length": str(len(data))}, data, body)

        def cdn(self, body):
            sha = self.path[len("/cdn/"):]
            data = next(d for d, lfs in hub.files.values() if lfs and hashlib.sha256(d).hexdigest() == sha)
            hub.cdn_authorization.append(self.headers.get("Authorization"))
            if hub.mode == "corrupt":
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            if self.headers.get("Range"):
                start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            part = data[start:]
            headers = {"Content-Length": str(len(part)), "Accept-Ranges": "bytes"}
            status = 200
            if start:
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if hub.mode == "stall" and body:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(part[:1000])
                self.wfile.flush()
                time.sleep(5)  # longer than the client's timeout
                return
            if hub.mode == "slow" and body:  # the whole file, over about a second
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                for i in range(0, len(part), len(part) // 10 + 1):
                    self.wfile.write(part[i:i + len(part) // 10 + 1])
                    self.wfile.flush()
                    time.sleep(0.1)
                return
            if hub.mode == "cut" and body:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(part[: len(part) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.send(status, headers, part, body)

    return Handler


@pytest.fixture
def hub():
    state = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def download(hub, cache, filename, **kwargs):
    kwargs.setdefault("token", "")
    return hf_hub_download(REPO, filename, cache_dir=cache, endpoint=hub.endpoint, timeout=2, **kwargs)


def complete_files(cache: Path) -> list[Path]:
    """Every blob or snapshot file that looks complete (not .incomplete), following snapshot links."""
    return [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".incomplete")
            and ("blobs" in p.parts or "snapshots" in p.parts)]


def test_downloads_land_in_huggingface_hubs_layout(hub, tmp_path):
    progress = []
    config = download(hub, tmp_path, "config.json")
    weights = download(hub, tmp_path, "model.safetensors", progress=lambda *p: progress.append(p))
    assert config.read_bytes() == CONFIG and weights.read_bytes() == WEIGHTS
    repo_dir = tmp_path / "models--test-org--tiny-model"
    assert (repo_dir / "refs" / "main").read_text() == COMMIT
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    assert weights == repo_dir / "snapshots" / COMMIT / "model.safetensors"
    assert os.readlink(weights) == f"../../blobs/{sha}"
    assert (repo_dir / "blobs" / git_blob_sha1(CONFIG)).read_bytes() == CONFIG
    assert progress and progress[-1] == ("model.safetensors", len(WEIGHTS), len(WEIGHTS))

    # huggingface_hub, the oracle, finds both files in the cache we wrote, without the network.
    import huggingface_hub

    for name, data in [("config.json", CONFIG), ("model.safetensors", WEIGHTS)]:
        found = huggingface_hub.hf_hub_download(REPO, name, cache_dir=tmp_path, local_files_only=True)
        assert Path(found).read_bytes() == data
    info = huggingface_hub.scan_cache_dir(tmp_path)
    assert [repo.repo_id for repo in info.repos] == [REPO]


def test_we_read_a_cache_huggingface_hub_wrote(hub, tmp_path):
    import huggingface_hub

    path = huggingface_hub.hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path, endpoint=hub.endpoint,
                                           token=False)
    hub.requests.clear()
    ours = hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path, local_files_only=True)
    assert ours.read_bytes() == WEIGHTS
    assert ours == Path(path)
    assert hub.requests == []  # offline: nothing was asked of the server
    assert try_to_load_from_cache(REPO, "model.safetensors", cache_dir=tmp_path) == ours


def test_a_cached_file_is_served_offline_and_when_the_server_is_gone(hub, tmp_path, monkeypatch):
    download(hub, tmp_path, "config.json")
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download(hub, tmp_path, "config.json").read_bytes() == CONFIG
    assert hub.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # An unreachable endpoint falls back to the cache, as huggingface_hub does.
    path = hf_hub_download(REPO, "config.json", cache_dir=tmp_path, endpoint="http://127.0.0.1:9", timeout=1)
    assert path.read_bytes() == CONFIG


def test_offline_and_not_cached_is_a_clear_error(tmp_path):
    with pytest.raises(imagetotext.CheckpointError, match="HF_HUB_OFFLINE"):
        hf_hub_download(REPO, "config.json", cache_dir=tmp_path, local_files_only=True)


def test_a_transfer_cut_off_halfway_leaves_no_complete_file_and_resumes(hub, tmp_path):
    hub.mode = "cut"
    with pytest.raises(imagetotext.CheckpointError, match="model.safetensors") as caught:
        download(hub, tmp_path, "model.safetensors")
    assert "resumes" in str(caught.value)
    assert complete_files(tmp_path) == []
    partial = list(tmp_path.rglob("*.incomplete"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(WEIGHTS)

    kept = partial[0].stat().st_size
    hub.mode = "normal"
    hub.requests.clear()
    assert download(hub, tmp_path, "model.safetensors").read_bytes() == WEIGHTS
    assert [r for _, path, r in hub.requests if path.startswith("/cdn/")] == [f"bytes={kept}-"]
    assert list(tmp_path.rglob("*.incomplete")) == []


def test_a_wrong_checksum_is_deleted(hub, tmp_path):
    hub.mode = "corrupt"
    with pytest.raises(imagetotext.CheckpointError, match="SHA-256"):
        download(hub, tmp_path, "model.safetensors")
    assert complete_files(tmp_path) == []
    assert list(tmp_path.rglob("*.incomplete")) == []
    assert not (tmp_path / "models--test-org--tiny-model" / "snapshots").exists()


def test_access_refused_and_the_token_is_sent(hub, tmp_path):
    hub.mode = "private"
    with pytest.raises(imagetotext.CheckpointError, match="HF_TOKEN") as caught:
        download(hub, tmp_path, "config.json")
    assert "401" in str(caught.value) and REPO in str(caught.value)
    assert download(hub, tmp_path, "config.json", token=hub.token).read_bytes() == CONFIG
    assert download(hub, tmp_path, "model.safetensors", token=hub.token).read_bytes() == WEIGHTS
    assert hub.cdn_authorization == [None]  # the token never leaves the hub for the CDN


def test_missing_repository_revision_and_file(hub, tmp_path):
    with pytest.raises(imagetotext.CheckpointError, match="repository test-org/other was not found"):
        hf_hub_download("test-org/other", "config.json", cache_dir=tmp_path, endpoint=hub.endpoint, token="")
    with pytest.raises(imagetotext.CheckpointError, match="revision v9 of test-org/tiny-model was not found"):
        download(hub, tmp_path, "config.json", revision="v9")
    with pytest.raises(imagetotext.CheckpointError, match="'missing.bin' of test-org/tiny-model"):
        download(hub, tmp_path, "missing.bin")
    assert complete_files(tmp_path) == []


def test_a_stalled_server_times_out(hub, tmp_path):
    hub.mode = "stall"
    start = time.monotonic()
    with pytest.raises(imagetotext.CheckpointError, match="model.safetensors"):
        download(hub, tmp_path, "model.safetensors")
    assert time.monotonic() - start < 15
    assert complete_files(tmp_path) == []


def test_a_local_directory_is_a_model(tmp_path):
    (tmp_path / "config.json").write_bytes(CONFIG)
    assert hf_hub_download(str(tmp_path), "config.json") == tmp_path / "config.json"
    with pytest.raises(imagetotext.CheckpointError, match="has no file tokenizer.json"):
        hf_hub_download(str(tmp_path), "tokenizer.json")


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    # huggingface_hub/constants.py: HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub.
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert imagetotext.hub.default_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert imagetotext.hub.default_cache_dir() == tmp_path / "legacy"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "new"))
    assert imagetotext.hub.default_cache_dir() == tmp_path / "new"


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_a_missing_file_is_recorded_as_huggingface_hub_records_it(hub, tmp_path):
    import huggingface_hub
    from huggingface_hub import _CACHED_NO_EXIST

    ours_cache, theirs_cache = tmp_path / "ours", tmp_path / "theirs"
    assert optional_hf_hub_download(REPO, "missing.bin", cache_dir=ours_cache, endpoint=hub.endpoint, token="") is None
    with pytest.raises(huggingface_hub.errors.EntryNotFoundError):
        huggingface_hub.hf_hub_download(REPO, "missing.bin", cache_dir=theirs_cache, endpoint=hub.endpoint, token=False)
    repo = "models--test-org--tiny-model"
    # The same marker and ref, byte for byte (huggingface_hub, the oracle, also tags the cache root).
    for sub in (".no_exist", "refs"):
        assert tree(ours_cache / repo / sub) == tree(theirs_cache / repo / sub) != set()
    assert (ours_cache / repo / ".no_exist" / COMMIT / "missing.bin").read_bytes() == b""
    assert (ours_cache / repo / "refs" / "main").read_text() == COMMIT
    # Each library reads the other's record.
    assert huggingface_hub.try_to_load_from_cache(REPO, "missing.bin", cache_dir=ours_cache) is _CACHED_NO_EXIST
    assert cached_as_missing(REPO, "missing.bin", cache_dir=theirs_cache)
    assert not cached_as_missing(REPO, "config.json", cache_dir=theirs_cache)

    hub.requests.clear()
    for cache in (ours_cache, theirs_cache):
        # Offline, for a commit hash, and with the server gone, the record answers without a request.
        assert optional_hf_hub_download(REPO, "missing.bin", cache_dir=cache, local_files_only=True) is None
        assert optional_hf_hub_download(REPO, "missing.bin", revision=COMMIT, cache_dir=cache, endpoint=hub.endpoint,
                                        token="") is None
        assert optional_hf_hub_download(REPO, "missing.bin", cache_dir=cache, endpoint="http://127.0.0.1:9",
                                        timeout=1) is None
        with pytest.raises(imagetotext.CheckpointError, match="does not exist"):
            hf_hub_download(REPO, "missing.bin", cache_dir=cache, local_files_only=True)
    assert hub.requests == []
    # Without a record, offline is still "not cached", not "missing".
    with pytest.raises(imagetotext.CheckpointError, match="HF_HUB_OFFLINE"):
        optional_hf_hub_download(REPO, "other.bin", cache_dir=ours_cache, local_files_only=True)
    # A file that exists is unaffected.
    assert optional_hf_hub_download(REPO, "config.json", cache_dir=ours_cache, endpoint=hub.endpoint,
                                    token="").read_bytes() == CONFIG


DOWNLOAD_SCRIPT = """
import sys
from imagetotext.hub import hf_hub_download
path = hf_hub_download(sys.argv[1], "model.safetensors", cache_dir=sys.argv[2], endpoint=sys.argv[3], token="",
                       timeout=5)
print(path)
"""


def test_two_processes_downloading_one_blob_take_turns(hub, tmp_path):
    hub.mode = "slow"
    processes = [subprocess.Popen([sys.executable, "-c", DOWNLOAD_SCRIPT, REPO, str(tmp_path), hub.endpoint],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert {Path(out.strip()) for out, _ in outputs} == {tmp_path / "models--test-org--tiny-model" / "snapshots" /
                                                         COMMIT / "model.safetensors"}
    assert Path(outputs[0][0].strip()).read_bytes() == WEIGHTS
    # The second waited on the lock, then found the blob: the bytes were fetched once.
    assert len([path for method, path, _ in hub.requests if method == "GET" and path.startswith("/cdn/")]) == 1
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    assert (tmp_path / ".locks" / "models--test-org--tiny-model" / f"{sha}.lock").exists()
    assert list(tmp_path.rglob("*.incomplete")) == []


def test_we_wait_for_huggingface_hubs_lock(hub, tmp_path):
    from filelock import FileLock

    sha = hashlib.sha256(WEIGHTS).hexdigest()
    lock_path = tmp_path / ".locks" / "models--test-org--tiny-model" / f"{sha}.lock"
    lock_path.parent.mkdir(parents=True)
    result = {}
    with FileLock(str(lock_path)):  # what huggingface_hub holds while it downloads this blob
        thread = threading.Thread(target=lambda: result.setdefault("path", download(hub, tmp_path, "model.safetensors")))
        thread.start()
        time.sleep(1.0)
        assert thread.is_alive() and complete_files(tmp_path) == []
        assert not [path for path in hub.requests if path[1].startswith("/cdn/")]
    thread.join(timeout=30)
    assert result["path"].read_bytes() == WEIGHTS


def test_endpoint_and_token_come_from_the_environment(hub, tmp_path, monkeypatch):
    """HF_ENDPOINT and HF_TOKEN, as huggingface_hub reads them, when no argument is given."""
    hub.mode = "private"
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    path = hf_hub_download(REPO, "config.json", cache_dir=tmp_path, timeout=2)
    assert path.read_bytes() == CONFIG
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(imagetotext.CheckpointError, match="401"):
        hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "other", timeout=2)
