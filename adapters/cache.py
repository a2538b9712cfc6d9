"""A bounded, digest-addressed local cache of adapter artifacts (engine side, and gateways that
share no volume): `<root>/sha256/<hex>/` filled from a source, verified on this node.

    cache = DigestCache(Path("/var/cache/loragate"), max_bytes=8 * 2**30, fetch=store.get_artifact)
    path = cache.ensure("sha256:ab..")   # downloaded, listed, digest-checked, renamed into place

A fill downloads into `<root>/.tmp/`, refuses anything but the two adapter files, recomputes the
digest and only then renames the directory into place, so a reader (vLLM) never sees a partial or
wrong artifact; a failed fill leaves nothing. Fills of one digest are serialised across processes
with a lock file. Least recently used entries are removed over `max_bytes`, never a pinned one
(the plugin pins what vLLM holds: vLLM re-reads the files when its own CPU cache drops an adapter).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from adapters.artifact import check_listing, verify_digest
from adapters.errors import ArtifactError
from adapters.objectstore import digest_hex, digest_relpath

Fetch = Callable[[str, Path], None]  # (digest, new directory) -> files written there


class DigestCache:
    def __init__(self, root: Path, *, max_bytes: int, fetch: Fetch) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.fetch = fetch
        self._pins: dict[str, int] = {}
        self._mutex = threading.Lock()
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        (root / ".locks").mkdir(exist_ok=True)
        shutil.rmtree(root / ".tmp", ignore_errors=True)  # fills cut short by a crash
        (root / ".tmp").mkdir(exist_ok=True)

    def path_of(self, digest: str) -> Path:
        return self.root / digest_relpath(digest)

    def digest_of(self, path: Path) -> str | None:
        """The digest a cache path stands for (`<root>/sha256/<hex>`), or None for other paths."""
        try:
            rel = path.relative_to(self.root).parts
        except ValueError:
            return None
        if len(rel) != 2 or rel[0] != "sha256":
            return None
        digest = "sha256:" + rel[1]
        try:
            digest_hex(digest)
        except ArtifactError:
            return None
        return digest

    @contextlib.contextmanager
    def _locked(self, digest: str) -> Iterator[None]:
        fd = os.open(self.root / ".locks" / digest_hex(digest), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def ensure(self, digest: str, *, pin: bool = False) -> Path:
        final = self.path_of(digest)
        with self._locked(digest):
            if not final.is_dir():
                self._fill(digest, final)
            os.utime(final)
            if pin:
                with self._mutex:
                    self._pins[digest] = self._pins.get(digest, 0) + 1
        self.evict(keep=digest)
        return final

    def unpin(self, digest: str) -> None:
        with self._mutex:
            left = self._pins.get(digest, 0) - 1
            if left > 0:
                self._pins[digest] = left
            else:
                self._pins.pop(digest, None)

    def _fill(self, digest: str, final: Path) -> None:
        staging = self.root / ".tmp" / f"{digest_hex(digest)}-{uuid.uuid4().hex}"
        try:
            self.fetch(digest, staging)
            check_listing(staging)
            verify_digest(staging, digest)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def entries(self) -> list[tuple[float, int, str]]:
        """(last use, bytes, digest) of every complete entry, least recently used first."""
        out: list[tuple[float, int, str]] = []
        for entry in os.scandir(self.root / "sha256"):
            if not entry.is_dir(follow_symlinks=False):
                continue
            size = sum(f.stat().st_size for f in os.scandir(entry.path) if f.is_file())
            out.append((entry.stat().st_mtime, size, "sha256:" + entry.name))
        return sorted(out)

    def evict(self, *, keep: str | None = None) -> list[str]:
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed: list[str] = []
        for _, size, digest in entries:
            if total <= self.max_bytes:
                break
            with self._mutex:
                pinned = digest in self._pins
            if pinned or digest == keep:
                continue
            shutil.rmtree(self.path_of(digest), ignore_errors=True)
            total -= size
            removed.append(digest)
        return removed
