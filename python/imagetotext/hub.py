"""Files from the Hugging Face hub, through the cache transformers and huggingface_hub already use.

The cache layout, the environment variables (HF_HOME, HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_ENDPOINT,
HF_TOKEN, HF_HUB_OFFLINE) and the download protocol are huggingface_hub's, so a file either library
downloaded is found by the other.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from . import _C


def default_cache_dir() -> Path:
    """The hub cache directory the environment selects."""
    return Path(_C.default_hub_cache_dir())


def try_to_load_from_cache(repo_id: str, filename: str, revision: str = "main", cache_dir=None) -> Path | None:
    """The cached path of ``filename``, or None; never touches the network."""
    path = _C.cached_hub_file(repo_id, filename, revision, os.fspath(cache_dir or default_cache_dir()))
    return None if path is None else Path(path)


def hf_hub_download(
    repo_id: str,
    filename: str,
    *,
    revision: str = "main",
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    local_files_only: bool | None = None,
    timeout: float = 10.0,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """The local path of ``filename`` in ``repo_id`` at ``revision``, downloaded when missing.

    ``repo_id`` may also be a local directory. ``local_files_only`` defaults to ``HF_HUB_OFFLINE``.
    ``progress(filename, received, total)`` is called as bytes arrive. Raises
    :class:`imagetotext.CheckpointError` naming the repository and file on any failure; an interrupted
    download resumes on the next call.
    """
    return Path(
        _C.hub_file(repo_id, filename, revision, None if cache_dir is None else os.fspath(cache_dir), endpoint, token,
                    local_files_only, timeout, progress)
    )


def optional_hf_hub_download(
    repo_id: str,
    filename: str,
    *,
    revision: str = "main",
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    local_files_only: bool | None = None,
    timeout: float = 10.0,
) -> Path | None:
    """:func:`hf_hub_download` for a file a model may lack: None when the repository does not have it.

    A 404 is recorded in the cache as huggingface_hub records it (``.no_exist/<commit>/<filename>``); that
    record answers without the network for a commit hash, offline, or when the server is unreachable.
    """
    path = _C.hub_file(repo_id, filename, revision, None if cache_dir is None else os.fspath(cache_dir), endpoint,
                       token, local_files_only, timeout, None, True)
    return None if path is None else Path(path)


def cached_as_missing(repo_id: str, filename: str, revision: str = "main", cache_dir=None) -> bool:
    """Whether the cache records that ``filename`` does not exist at ``revision``; never touches the network."""
    return _C.cached_as_missing(repo_id, filename, revision, os.fspath(cache_dir or default_cache_dir()))


__all__ = ["cached_as_missing", "default_cache_dir", "hf_hub_download", "optional_hf_hub_download", "try_to_load_from_cache"]
