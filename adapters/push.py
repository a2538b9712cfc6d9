"""Pushed artifacts: the tar stream a client sends, unpacked under strict rules into staging, then
validated and moved into the content-addressed store. Nothing outside staging is written until
every check passed, and staging is removed whatever happens.

Wire format: an uncompressed POSIX tar of flat regular files (no directories, links or devices),
at most `max_bytes` in all, with the digest the client computed (`compute_digest`) beside it. A
member is refused by name and type before a byte of it is written:

    invalid_name            absolute, empty or control-character names
    artifact_outside_store  `..`, a `/` (no subdirectories), symlinks and hard links
    unsafe_artifact_format  pickles (.bin/.pt/...), directories, devices, unknown files
    artifact_invalid        a duplicate member, a truncated tar, a member over the cap

Trainer leftovers (tokenizer files, README, training_args.bin) are dropped unread and reported as
skipped. Every refused member is named in one error.

Example (client):
    tar_path, listing = pack(Path("./out"), Path("/tmp/a.tar"))
Example (server):
    skipped = unpack(Path("/store/.incoming/x.tar"), Path("/store/.incoming/x"), max_bytes=2**29)
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
from pathlib import Path

from adapters.artifact import Listing, classify_name, list_artifact, refusal
from adapters.errors import ArtifactError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COPY_CHUNK = 1 << 20


def member_problem(name: str) -> tuple[str, str] | None:
    """Pure: (code, why) if a tar member name can never be an artifact file."""
    if not name or _CONTROL.search(name) or "\\" in name:
        return "invalid_name", "bad name"
    if name.startswith("/"):
        return "invalid_name", "absolute name"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "artifact_outside_store", "leaves the artifact"
    if len(parts) != 1:
        return "artifact_outside_store", "subdirectory"
    return None


def pack(directory: Path, out: Path) -> tuple[Path, Listing]:
    """Client side: a tar of the files that would be kept (trainer leftovers left out).

    Raises ArtifactError naming every refused file, before anything is sent."""
    listing = list_artifact(directory, skip_trainer_files=True)
    if listing.refused:
        raise refusal(listing.refused)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(listing.kept):
            info = tarfile.TarInfo(name)
            info.size = listing.kept[name]
            info.mode = 0o644
            fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                tar.addfile(info, f)
    return out, listing


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    source = tar.extractfile(member)
    if source is None:
        raise ArtifactError(f"{member.name}: unreadable member", code="artifact_invalid")
    fd = os.open(dest / member.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out, source:
        left = member.size
        while left > 0:
            chunk = source.read(min(_COPY_CHUNK, left))
            if not chunk:
                raise ArtifactError("upload ends inside a file", code="artifact_invalid")
            out.write(chunk)
            left -= len(chunk)


def unpack(tar_path: Path, dest: Path, *, max_bytes: int) -> tuple[str, ...]:
    """Server side: write the kept members of an uploaded tar into `dest` (created; removed
    again on any refusal). Returns the skipped names."""
    dest.mkdir(parents=True)
    try:
        return _unpack(tar_path, dest, max_bytes)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _unpack(tar_path: Path, dest: Path, max_bytes: int) -> tuple[str, ...]:
    refused: list[tuple[str, str, str]] = []
    skipped: list[str] = []
    seen: set[str] = set()
    total = 0
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for member in tar:
                name = member.name
                problem = member_problem(name)
                if problem is None and (member.issym() or member.islnk()):
                    problem = ("artifact_outside_store", "link")
                if problem is None:
                    verdict = classify_name(
                        name, is_file=member.isreg(), is_link=False, skip_trainer_files=True
                    )
                    if verdict == "skip":
                        skipped.append(name)
                        continue
                    if verdict != "keep":
                        problem = (verdict, "not an adapter file")
                if problem is None and name in seen:
                    problem = ("artifact_invalid", "duplicate")
                if problem is not None:
                    refused.append((name[:100], *problem))
                    continue
                seen.add(name)
                total += member.size
                if total > max_bytes:
                    raise ArtifactError(
                        f"artifact is over the {max_bytes}-byte cap", code="payload_too_large"
                    )
                if not refused:
                    _write_member(tar, member, dest)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if refused:
            raise refusal(refused) from exc
        raise ArtifactError(
            f"upload is not a complete tar archive: {type(exc).__name__}", code="artifact_invalid"
        ) from exc
    if refused:
        raise refusal(refused)
    return tuple(skipped)
