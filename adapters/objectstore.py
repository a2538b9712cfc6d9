"""Adapter artifacts in an S3-compatible object store, addressed by digest.

Layout under `<bucket>/<prefix>/`:

    sha256/<hex>/adapter_config.json
    sha256/<hex>/adapter_model.safetensors
    sha256/<hex>/.complete            written last: an artifact without it does not exist

Objects are written once and never overwritten (same digest, same bytes); readers verify the digest
after download on their own node, so a store that hands back other bytes is caught there.

Credentials: boto3's own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, instance roles), or
files mounted from a secret (`access_key_file`, `secret_key_file`). Configuration from the
environment with `S3Config.from_env()` (LORAGATE_S3_ENDPOINT_URL, _BUCKET, _PREFIX, _REGION,
_ACCESS_KEY_FILE, _SECRET_KEY_FILE); the gateway and the engine plugin read the same names.

Example:
    store = S3Store(S3Config(bucket="adapters", endpoint_url="http://127.0.0.1:9000"))
    store.put_artifact("sha256:ab..", Path("/tmp/staged"))
    store.get_artifact("sha256:ab..", Path("/cache/.tmp/x"))
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.artifact import REQUIRED_FILES
from adapters.errors import ArtifactError

COMPLETE_MARKER = ".complete"
DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")


def digest_hex(digest: str) -> str:
    """Pure: the hex part of a `sha256:<hex>` digest, or ArtifactError(digest_mismatch)."""
    m = DIGEST_RE.fullmatch(digest)
    if m is None:
        raise ArtifactError("digest must be sha256:<64 hex digits>", code="digest_mismatch")
    return m[1]


def digest_relpath(digest: str) -> str:
    """Where an artifact lives relative to a store root or cache root: `sha256/<hex>`."""
    return f"sha256/{digest_hex(digest)}"


@dataclass(frozen=True)
class S3Config:
    bucket: str
    endpoint_url: str | None = None
    prefix: str = "adapters"
    region: str = "us-east-1"
    access_key_file: Path | None = None
    secret_key_file: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Config | None:
        env = os.environ if env is None else env
        bucket = env.get("LORAGATE_S3_BUCKET")
        if not bucket:
            return None
        access = env.get("LORAGATE_S3_ACCESS_KEY_FILE")
        secret = env.get("LORAGATE_S3_SECRET_KEY_FILE")
        return cls(
            bucket=bucket,
            endpoint_url=env.get("LORAGATE_S3_ENDPOINT_URL") or None,
            prefix=env.get("LORAGATE_S3_PREFIX", "adapters"),
            region=env.get("LORAGATE_S3_REGION", "us-east-1"),
            access_key_file=Path(access) if access else None,
            secret_key_file=Path(secret) if secret else None,
        )

    def key(self, digest: str, name: str) -> str:
        base = f"{self.prefix.strip('/')}/" if self.prefix.strip("/") else ""
        return f"{base}{digest_relpath(digest)}/{name}"


class S3Store:
    """Blocking boto3 calls: run them in a thread from async code."""

    def __init__(self, config: S3Config) -> None:
        import boto3
        from botocore.config import Config

        self.config = config
        credentials: dict[str, str] = {}
        if config.access_key_file is not None and config.secret_key_file is not None:
            credentials = {
                "aws_access_key_id": config.access_key_file.read_text().strip(),
                "aws_secret_access_key": config.secret_key_file.read_text().strip(),
            }
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=config.endpoint_url or None,  # "" (an env file's unset value): AWS
            region_name=config.region,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path"},
            ),
            **credentials,
        )

    def close(self) -> None:
        self.client.close()

    def has_artifact(self, digest: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(
                Bucket=self.config.bucket, Key=self.config.key(digest, COMPLETE_MARKER)
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def put_artifact(self, digest: str, directory: Path) -> None:
        """Upload the files of a verified artifact, then the marker; a no-op if already there."""
        if self.has_artifact(digest):
            return
        for name in REQUIRED_FILES:
            self.client.upload_file(
                str(directory / name), self.config.bucket, self.config.key(digest, name)
            )
        self.client.put_object(
            Bucket=self.config.bucket, Key=self.config.key(digest, COMPLETE_MARKER), Body=b""
        )

    def get_artifact(self, digest: str, directory: Path) -> None:
        """Download into `directory` (created, must not exist); the caller verifies the digest."""
        if not self.has_artifact(digest):
            raise ArtifactError(f"artifact {digest} not in the object store", code="not_found")
        directory.mkdir(parents=True)
        for name in REQUIRED_FILES:
            self.client.download_file(
                self.config.bucket, self.config.key(digest, name), str(directory / name)
            )

    def find_digest(self, short_hex: str) -> str | None:
        """The one complete artifact whose digest starts with `short_hex` (engine names carry 12
        hex digits), or None when there is none or more than one."""
        if not re.fullmatch(r"[0-9a-f]{12,64}", short_hex):
            return None
        base = self.config.key("sha256:" + "0" * 64, "")[: -len("0" * 64) - 1]
        resp = self.client.list_objects_v2(
            Bucket=self.config.bucket, Prefix=base + short_hex, MaxKeys=10
        )
        found = {
            obj["Key"][len(base) :].split("/", 1)[0]
            for obj in resp.get("Contents", [])
            if obj["Key"].endswith("/" + COMPLETE_MARKER)
        }
        return "sha256:" + found.pop() if len(found) == 1 else None

    def delete_artifact(self, digest: str) -> None:
        for name in (COMPLETE_MARKER, *REQUIRED_FILES):
            self.client.delete_object(Bucket=self.config.bucket, Key=self.config.key(digest, name))
