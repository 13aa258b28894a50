"""What a model is by content, not by name: the commit a hub revision resolves to, a local directory's file hashes.

Artifact keys use these, so a moved hub branch or a directory whose weights were replaced in place never passes for
the model that made earlier results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from tqdm.auto import tqdm

from flux158.artifacts import atomic_write_text, config_hash, sha256_file
from flux158.errors import ModelUnavailableError
from flux158.models.hub import HubFluxSpec, resolve_pretrained

log = logging.getLogger(__name__)

FINGERPRINTS_DIR = "fingerprints"


def is_commit(revision: str | None) -> bool:
    return revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision) is not None


def resolve_commit(spec: HubFluxSpec) -> str:
    """The commit `spec.revision` (a branch, a tag, or None for `main`) names now: asked of the hub, or read from the
    local cache's snapshot when the hub is off (`HF_HUB_OFFLINE=1`) or unreachable.

    Raises:
        ModelUnavailableError: as `resolve_pretrained` (not on the hub for this account, not cached offline).
    """
    if is_commit(spec.revision):
        return spec.revision
    source = resolve_pretrained(spec)  # the availability checks, with their instructions
    if Path(source).is_dir():  # a cached snapshot: `.../snapshots/<commit>`
        if not is_commit(Path(source).name):
            raise ModelUnavailableError(f"cannot tell which commit of {spec.pretrained} the cache holds ({source})")
        return Path(source).name
    from huggingface_hub import HfApi

    return HfApi().model_info(spec.pretrained, revision=spec.revision).sha


def _weight_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(directory).parts))


def directory_fingerprint(directory: Path, cache_dir: Path) -> str:
    """sha256 over every file of a model directory (weights, configs, tokenizers; hidden files left out), by
    relative path and content.

    Hashing a 24 GB pipeline takes minutes, so each file's sha256 is cached under
    `<cache_dir>/fingerprints/` and computed again only when its size or modification time changed. The cache lives
    there rather than beside the model because model directories are often read-only.
    """
    directory = Path(directory).expanduser().resolve()
    record_path = Path(cache_dir) / FINGERPRINTS_DIR / f"{config_hash({'directory': str(directory)}, 16)}.json"
    try:
        cached = json.loads(record_path.read_text())["files"]
    except (OSError, ValueError, KeyError):
        cached = {}
    files, stale = {}, []
    for path in _weight_files(directory):
        stat = path.stat()
        relative = path.relative_to(directory).as_posix()
        entry = cached.get(relative)
        if entry and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
            files[relative] = entry
        else:
            stale.append((relative, path, stat))
    if stale:
        total = sum(stat.st_size for _, _, stat in stale)
        log.info("hashing %d file(s) of %s (%.1f GB) once, to key its artifacts by content", len(stale), directory,
                 total / 1e9)
        for relative, path, stat in tqdm(stale, desc="model fingerprint", unit="file", disable=total < 1 << 30):
            files[relative] = [stat.st_size, stat.st_mtime_ns, sha256_file(path)]
        record_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record_path, json.dumps({"directory": str(directory), "files": files}, indent=1))
    digest = hashlib.sha256()
    for relative in sorted(files):
        digest.update(f"{relative}\0{files[relative][2]}\n".encode())
    return digest.hexdigest()
