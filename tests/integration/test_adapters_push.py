"""Push (POST .../adapters/NAME/uploads) into a local store and a real S3 protocol server (moto),
with the gateway in-process: what is accepted, and that every refusal leaves nothing behind
(store, object store, registry)."""

from __future__ import annotations

import io
import json
import shutil
import struct
import tarfile
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from adapters.artifact import compute_digest
from adapters.objectstore import S3Store
from adapters.push import pack
from tests.fixtures.inprocess import InProcessFactory, InProcessGateway
from tests.fixtures.models import TinyModels
from tests.fixtures.objectstore import S3Server

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def tar_of(members: Sequence[tuple[str, bytes | None, bytes]]) -> bytes:
    """(name, data or None, type) -> an uncompressed tar built member by member."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


def adapter_files(tiny_models: TinyModels, base: str | None = None) -> dict[str, bytes]:
    src = tiny_models.adapter_dirs[0]
    config = json.loads((src / "adapter_config.json").read_text())
    if base is not None:
        config["base_model_name_or_path"] = base
    return {
        "adapter_config.json": json.dumps(config).encode(),
        "adapter_model.safetensors": (src / "adapter_model.safetensors").read_bytes(),
    }


def write_dir(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


@pytest.fixture
async def gw(
    inprocess_gateway: InProcessFactory,
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> InProcessGateway:
    env = s3_server.env(s3_bucket)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, env[key])
    gateway = await inprocess_gateway(
        adapter_store=tmp_path / "store",
        s3_bucket=s3_bucket,
        s3_endpoint_url=s3_server.url,
        base_model_aliases=[HUB_ID],
        max_adapter_bytes=4 * 1024 * 1024,
    )
    await gateway.admin("POST", "/tenants", {"id": "acme"}, expect=201)
    return gateway


async def upload(gw: InProcessGateway, body: bytes, digest: str, name: str = "support") -> Any:
    return await gw.client.post(
        f"/admin/v1/tenants/acme/adapters/{name}/uploads",
        content=body,
        headers={**gw.bearer(gw.admin_token), "x-loragate-digest": digest},
    )


def left_behind(gw: InProcessGateway, s3: S3Server, bucket: str) -> list[str]:
    store = gw.settings.adapter_store
    files = sorted(
        str(p.relative_to(store)) for p in store.rglob("*") if p.is_file() or p.is_symlink()
    )
    return files + s3.keys(bucket)


async def versions(gw: InProcessGateway) -> list[Any]:
    result: list[Any] = await gw.admin("GET", "/tenants/acme/adapters")
    return result


async def test_push_trainer_output_skips_leftovers_and_is_content_addressed(
    gw: InProcessGateway, tiny_models: TinyModels, s3_server: S3Server, s3_bucket: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    files = adapter_files(tiny_models, base=HUB_ID)
    files.update({
        "tokenizer.json": b"{}", "tokenizer_config.json": b"{}", "special_tokens_map.json": b"{}",
        "README.md": b"# card", "training_args.bin": b"\x80\x04pickle",
    })  # fmt: skip
    source = write_dir(tmp_path / "out", files)
    tar_path, listing = pack(source, tmp_path / "a.tar")
    assert set(listing.skipped) == {
        "README.md", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
        "training_args.bin",
    }  # fmt: skip
    digest = compute_digest(source)
    r = await upload(gw, tar_path.read_bytes(), digest)
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["ref"] == "support@1"
    assert first["digest"] == digest
    assert first["base_model"] == HUB_ID
    assert first["path"] == "sha256/" + digest.removeprefix("sha256:")
    hexd = digest.removeprefix("sha256:")
    # In the object store only: the engines fetch by digest, the gateway keeps no copy.
    assert left_behind(gw, s3_server, s3_bucket) == [
        f"adapters/sha256/{hexd}/.complete", f"adapters/sha256/{hexd}/adapter_config.json",
        f"adapters/sha256/{hexd}/adapter_model.safetensors",
    ]  # fmt: skip
    # The same bytes again: a new immutable version at the same content address.
    r = await upload(gw, tar_path.read_bytes(), digest)
    assert r.status_code == 201
    assert r.json()["ref"] == "support@2"
    rows = await versions(gw)
    assert [row["ref"] for row in rows] == ["support@1", "support@2"]
    assert rows[0]["used_by"] == []
    # A release that uses it shows up in the listings.
    await gw.admin(
        "POST", "/tenants/acme/models/chat/releases", {"adapter": "support@1", "prompt": None}, 201
    )
    releases = await gw.admin("GET", "/tenants/acme/releases")
    assert [r["adapter"] for r in releases] == ["support@1"]
    rows = await versions(gw)
    assert rows[0]["used_by"][0]["release"] == releases[0]["id"]


def _lying_header(files: dict[str, bytes]) -> dict[str, bytes]:
    weights = files["adapter_model.safetensors"]
    (n,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 4096  # claims more bytes than the file holds
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return {**files, "adapter_model.safetensors": struct.pack("<Q", len(raw)) + raw
            + weights[8 + n :]}  # fmt: skip


HOSTILE: list[tuple[str, str]] = [
    ("traversal", "artifact_outside_store"),
    ("absolute", "invalid_name"),
    ("symlink", "artifact_outside_store"),
    ("pickle", "unsafe_artifact_format"),
    ("lying_header", "artifact_invalid"),
    ("digest_mismatch", "digest_mismatch"),
    ("over_cap", "payload_too_large"),
    ("truncated", "artifact_invalid"),
]


@pytest.mark.parametrize(("case", "code"), HOSTILE)
async def test_hostile_upload_refused_and_leaves_nothing(
    gw: InProcessGateway, tiny_models: TinyModels, s3_server: S3Server, s3_bucket: str,
    case: str, code: str,
) -> None:  # fmt: skip
    files = adapter_files(tiny_models)
    good: list[tuple[str, bytes | None, bytes]] = [
        (n, d, tarfile.REGTYPE) for n, d in files.items()
    ]
    digest = _digest_of(files)
    members = good
    if case == "traversal":
        members = [*good, ("../../etc/cron.d/x", b"x", tarfile.REGTYPE)]
    elif case == "absolute":
        members = [*good, ("/etc/x", b"x", tarfile.REGTYPE)]
    elif case == "symlink":
        members = [good[0], ("adapter_model.safetensors", None, tarfile.SYMTYPE)]
    elif case == "pickle":
        members = [*good, ("adapter_model.bin", b"\x80\x04x", tarfile.REGTYPE)]
    elif case == "lying_header":
        lying = _lying_header(files)
        members = [(n, d, tarfile.REGTYPE) for n, d in lying.items()]
        digest = _digest_of(lying)
    elif case == "digest_mismatch":
        digest = "sha256:" + "0" * 64
    elif case == "over_cap":
        members = [*good, ("loragate_manifest.json", b" " * (5 * 1024 * 1024), tarfile.REGTYPE)]
    body = tar_of(members)
    if case == "truncated":
        body = body[: len(body) // 2]
    r = await upload(gw, body, digest)
    assert r.status_code in (413, 422), r.text
    assert r.json()["error"]["code"] == code, r.text
    if case in ("traversal", "pickle"):
        assert "refused files" in r.json()["error"]["message"]
    assert left_behind(gw, s3_server, s3_bucket) == []
    assert await versions(gw) == []


async def test_every_refused_file_is_named_in_one_error(
    gw: InProcessGateway, tiny_models: TinyModels
) -> None:
    files = adapter_files(tiny_models)
    members = [(n, d, tarfile.REGTYPE) for n, d in files.items()]
    members += [("adapter_model.bin", b"x", tarfile.REGTYPE), ("model.pt", b"x", tarfile.REGTYPE),
                ("../up", b"x", tarfile.REGTYPE)]  # fmt: skip
    r = await upload(gw, tar_of(members), _digest_of(files))
    message = r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "artifact_outside_store"
    for name in ("adapter_model.bin", "model.pt", "../up"):
        assert name in message


async def test_digest_collision_against_existing_version_is_refused(
    gw: InProcessGateway, tiny_models: TinyModels, s3_server: S3Server, s3_bucket: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    files = adapter_files(tiny_models)
    digest = _digest_of(files)
    r = await upload(gw, tar_of([(n, d, tarfile.REGTYPE) for n, d in files.items()]), digest)
    assert r.status_code == 201
    before = left_behind(gw, s3_server, s3_bucket)
    other = adapter_files(tiny_models, base=HUB_ID)  # other bytes, claiming the same digest
    r = await upload(gw, tar_of([(n, d, tarfile.REGTYPE) for n, d in other.items()]), digest)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "digest_mismatch"
    assert left_behind(gw, s3_server, s3_bucket) == before
    stored = tmp_path / "stored"
    config = gw.settings.object_store()
    assert config is not None
    s3 = S3Store(config)
    try:
        s3.get_artifact(digest, stored)  # the object store's copy is the first push's
    finally:
        s3.close()
    assert compute_digest(stored) == digest
    assert [v["ref"] for v in await versions(gw)] == ["support@1"]


async def test_connection_cut_mid_upload_leaves_nothing(
    gw: InProcessGateway, tiny_models: TinyModels, s3_server: S3Server, s3_bucket: str,
) -> None:  # fmt: skip
    files = adapter_files(tiny_models)
    body = tar_of([(n, d, tarfile.REGTYPE) for n, d in files.items()])
    sent: list[MutableMapping[str, Any]] = []
    messages: list[MutableMapping[str, Any]] = [
        {"type": "http.request", "body": body[:4096], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> MutableMapping[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/admin/v1/tenants/acme/adapters/support/uploads",
        "raw_path": b"/admin/v1/tenants/acme/adapters/support/uploads", "query_string": b"",
        "root_path": "", "server": ("gateway", 80), "client": ("127.0.0.1", 5000),
        "headers": [
            (b"authorization", f"Bearer {gw.admin_token}".encode()),
            (b"x-loragate-digest", _digest_of(files).encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }  # fmt: skip
    await gw.app(scope, receive, send)
    assert left_behind(gw, s3_server, s3_bucket) == []
    assert await versions(gw) == []


def _digest_of(files: dict[str, bytes]) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return compute_digest(write_dir(Path(tmp) / "a", files))


def test_inspect_lists_every_reason(tiny_models: TinyModels, tmp_path: Path) -> None:
    import subprocess
    import sys

    files = adapter_files(tiny_models, base="someone/else")
    files["adapter_model.bin"] = b"x"
    source = write_dir(tmp_path / "bad", files)
    (source / "link").symlink_to("/etc/passwd")
    cmd = [sys.executable, "-m", "adapters.cli", "adapters", "inspect", str(source),
           "--base-model", tiny_models.served_name]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    doc = json.loads(out.stderr)
    codes = [r["code"] for r in doc["refused"]]
    assert codes == ["unsafe_artifact_format", "artifact_outside_store", "adapter_incompatible"]
    shutil.rmtree(source)
    good = write_dir(tmp_path / "good", adapter_files(tiny_models, base=HUB_ID))
    (good / "tokenizer.json").write_text("{}")
    cmd[5] = str(good)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    doc = json.loads(out.stdout)
    assert doc["ok"]
    assert doc["skipped"] == ["tokenizer.json"]
    assert doc["base_model"] == HUB_ID
    assert doc["digest"] == compute_digest(good)
    assert doc["rank"] >= 1
    assert doc["target_modules"]
