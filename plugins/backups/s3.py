"""The `s3` backup target: backups in a bucket of any S3-compatible store (DigitalOcean Spaces,
SeaweedFS, MinIO, AWS) through boto3, whose calls all block and so run in threads.

Each backup is the object `<prefix><key>`, uploaded in parts of 8 MiB, with the SHA-256 of its
bytes as the user metadata `sha256`; a fetch streams the object and its metadata from one
GET, so the digest checked belongs to the bytes received. The secret key is the mesh secret
`s3_secret_key`, never configuration, and no message or log line holds it.

Requests are signed for path-style addressing (`<endpoint>/<bucket>/<key>`), which Spaces and
SeaweedFS both serve, and checksums are sent only where an operation requires them: the SDK's
newer default (a CRC on every upload) is refused by some S3-compatible stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from plugins.backups import (
    HASH_CHUNK,
    BackupCorrupt,
    BackupNotFound,
    BackupTargetConfigError,
    BackupTargetContext,
    BackupTargetError,
    StoredBackup,
    TargetAccessDenied,
    TargetFull,
    TargetUnavailable,
    check_config,
    check_key,
    file_sha256,
    scratch_path,
)

NAME = "s3"
SECRET_NAME = "s3_secret_key"
KNOWN_KEYS = ("endpoint", "bucket", "region", "access_key", "prefix")
PART_BYTES = 8 * 1024 * 1024
HEADS_AT_ONCE = 8  # `list` asks for each object's digest; that many requests in flight
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_PART = re.compile(r"[A-Za-z0-9._+=-]+")
FULL_CODES = frozenset({"EntityTooLarge", "QuotaExceeded", "InsufficientStorage", "StorageFull"})
DENIED_CODES = frozenset(
    {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken"}
)
RETRY_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"})
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
SDK_ERRORS = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    Boto3Error,
    OSError,  # local files
)
Listed = list[tuple[str, int, float]]  # object key, size, last modified


@dataclass(frozen=True, slots=True)
class S3Settings:
    """An `s3` target's configuration; `prefix` is empty or ends with `/`."""

    endpoint: str
    bucket: str
    access_key: str
    region: str = "us-east-1"
    prefix: str = ""


def _text(config: dict[str, Any], key: str, right: str, default: str | None = None) -> str:
    value = config.get(key, default)
    if value is None:
        raise BackupTargetConfigError(NAME, f"missing; give {right}", key)
    if not isinstance(value, str) or not value.strip():
        raise BackupTargetConfigError(NAME, f"must be {right}", key)
    return value.strip()


def parse_settings(config: dict[str, Any]) -> S3Settings:
    """An `s3` target's settings from its config section; `BackupTargetConfigError` saying
    which key is wrong and what it should be."""
    check_config(NAME, config, KNOWN_KEYS)
    url = "an http(s) URL such as https://fra1.digitaloceanspaces.com"
    endpoint = _text(config, "endpoint", url).rstrip("/")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        raise BackupTargetConfigError(NAME, f"must be {url}, without a path", "endpoint")
    bucket = _text(config, "bucket", "a bucket name such as 'mesh-backups'")
    if _BUCKET.fullmatch(bucket) is None:
        raise BackupTargetConfigError(
            NAME, "must be 3-63 lowercase letters, digits, '.' and '-'", "bucket"
        )
    region = _text(config, "region", "a region name such as 'fra1' or 'us-east-1'", "us-east-1")
    access_key = _text(config, "access_key", "the access key id of the store's key pair")
    prefix = config.get("prefix", "")
    if not isinstance(prefix, str):
        raise BackupTargetConfigError(NAME, "must be a string such as 'mesh1/'", "prefix")
    prefix = prefix.strip("/")
    if prefix and not all(_PREFIX_PART.fullmatch(part) for part in prefix.split("/")):
        raise BackupTargetConfigError(
            NAME, "must be '/'-separated parts of letters, digits and '._+=-'", "prefix"
        )
    return S3Settings(endpoint, bucket, access_key, region, f"{prefix}/" if prefix else "")


def _secret(ctx: BackupTargetContext) -> str:
    how = f"set it with `meshctl secret set --mesh {SECRET_NAME}`"
    raw = ctx.secrets(SECRET_NAME)
    if not raw:
        raise BackupTargetConfigError(NAME, f"the mesh secret {SECRET_NAME} is missing; {how}")
    try:
        return raw.decode().strip()
    except UnicodeDecodeError:
        raise BackupTargetConfigError(
            NAME, f"the mesh secret {SECRET_NAME} is not UTF-8 text; {how}"
        ) from None


def _client_error(err: BaseException) -> Any:
    """The S3 error response behind `err` (boto3's transfers wrap it), or None."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, botocore.exceptions.ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def translate(
    action: str, err: BaseException, *, endpoint: str, secret: str, key: str | None = None
) -> BackupTargetError:
    """The target's own error for what boto3 (or a local file) raised while doing `action`."""
    answer = _client_error(err)
    if answer is not None:
        error = answer.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(answer.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        detail = f"{code or status}: {error.get('Message') or 'no message'}"
        if secret:
            detail = detail.replace(secret, "<secret>")
        if code in FULL_CODES or status == 507:
            return TargetFull(action, NAME, detail)
        if code == "NoSuchBucket":
            return BackupTargetError(action, NAME, f"the bucket does not exist ({detail})")
        if key is not None and (code in NOT_FOUND_CODES or status == 404):
            return BackupNotFound(action, NAME, key)
        if code in DENIED_CODES or status in (401, 403):
            return TargetAccessDenied(
                action,
                NAME,
                f"access denied ({detail}); check access_key and the mesh secret {SECRET_NAME}",
            )
        if code in RETRY_CODES or status >= 500:
            return TargetUnavailable(action, NAME, detail)
        return BackupTargetError(action, NAME, detail)
    reason = str(err) or type(err).__name__
    if secret:
        reason = reason.replace(secret, "<secret>")
    if isinstance(
        err,
        botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError
        | botocore.exceptions.IncompleteReadError,
    ):
        return TargetUnavailable(action, NAME, f"no answer from {endpoint}: {reason}")
    return BackupTargetError(action, NAME, reason)


class _Stopped(Exception):
    """The fetch's caller went away (cancelled): stop reading and clean up."""


class S3Target:
    """Backups as objects of one bucket, under a prefix."""

    name = NAME

    def __init__(self, settings: S3Settings, secret: str, logger: logging.Logger) -> None:
        self.settings = settings
        self._secret = secret
        self._log = logger
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._transfer = TransferConfig(
            multipart_threshold=PART_BYTES,
            multipart_chunksize=PART_BYTES,
            max_concurrency=4,
            preferred_transfer_client="classic",
        )

    def __repr__(self) -> str:
        return f"S3Target({self.settings!r})"

    async def put(self, key: str, source: Path) -> StoredBackup:
        check_key(NAME, key)
        s3 = await self._s3()
        with self._translated(f"store backup {key!r}"):
            stored = await asyncio.to_thread(self._put, s3, key, source)
        self._log.info(
            "Backup stored. target=%s bucket=%s key=%s size=%d sha256=%s",
            NAME, self.settings.bucket, key, stored.size, stored.sha256,
        )  # fmt: skip
        return stored

    async def get(self, key: str, destination: Path) -> StoredBackup:
        check_key(NAME, key)
        s3 = await self._s3()
        stop = threading.Event()
        try:
            with self._translated(f"fetch backup {key!r}", key):
                stored = await asyncio.to_thread(self._get, s3, key, destination, stop)
        finally:
            stop.set()  # a cancelled fetch's thread removes its partial file itself
        self._log.info("Backup fetched. target=%s key=%s size=%d", NAME, key, stored.size)
        return stored

    async def list(self, prefix: str = "") -> list[StoredBackup]:
        s3 = await self._s3()
        action = f"list backups {prefix!r}"
        with self._translated(action):
            found = await asyncio.to_thread(self._list, s3, prefix)
        gate = asyncio.Semaphore(HEADS_AT_ONCE)

        async def digest(object_key: str) -> str | None:
            async with gate:
                with self._translated(action):
                    return await asyncio.to_thread(self._recorded_sha256, s3, object_key)

        digests = await asyncio.gather(*(digest(object_key) for object_key, _, _ in found))
        cut = len(self.settings.prefix)
        backups = [
            StoredBackup(object_key[cut:], size, sha256, created)
            for (object_key, size, created), sha256 in zip(found, digests, strict=True)
            if sha256 is not None
        ]
        return sorted(backups, key=lambda b: b.key)

    async def delete(self, key: str) -> None:
        check_key(NAME, key)
        s3 = await self._s3()
        with contextlib.suppress(BackupNotFound), self._translated(f"delete backup {key!r}", key):
            await asyncio.to_thread(
                s3.delete_object, Bucket=self.settings.bucket, Key=self._object_key(key)
            )

    async def close(self) -> None:
        async with self._lock:
            client, self._client, self._closed = self._client, None, True
        if client is not None:
            await asyncio.to_thread(client.close)

    # --- the blocking parts, each run in a thread -----------------------------------------

    def _object_key(self, key: str) -> str:
        return f"{self.settings.prefix}{key}"

    def _new_client(self) -> Any:
        settings = self.settings
        config = Config(
            region_name=settings.region,
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=10,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            ignore_configured_endpoint_urls=True,
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint,
            aws_access_key_id=settings.access_key,
            aws_secret_access_key=self._secret,
            config=config,
        )

    def _put(self, s3: Any, key: str, source: Path) -> StoredBackup:
        sha256, size = file_sha256(source)
        object_key = self._object_key(key)
        s3.upload_file(
            str(source),
            self.settings.bucket,
            object_key,
            ExtraArgs={"Metadata": {"sha256": sha256}},
            Config=self._transfer,
        )
        head = s3.head_object(Bucket=self.settings.bucket, Key=object_key)
        if int(head["ContentLength"]) != size or head.get("Metadata", {}).get("sha256") != sha256:
            raise BackupTargetError(
                f"store backup {key!r}",
                NAME,
                f"the store holds {head['ContentLength']} B, not the {size} B of {source} "
                "(changed while it was stored?)",
            )
        return StoredBackup(key, size, sha256, head["LastModified"].timestamp())

    def _get(self, s3: Any, key: str, destination: Path, stop: threading.Event) -> StoredBackup:
        scratch = scratch_path(destination)
        try:
            answer = s3.get_object(Bucket=self.settings.bucket, Key=self._object_key(key))
            expected = str(answer.get("Metadata", {}).get("sha256", ""))
            digest = hashlib.sha256()
            size = 0
            body = answer["Body"]
            try:
                with scratch.open("wb") as out:
                    for chunk in body.iter_chunks(HASH_CHUNK):
                        if stop.is_set():
                            raise _Stopped
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            finally:
                body.close()
            if digest.hexdigest() != expected:
                raise BackupCorrupt(
                    f"fetch backup {key!r}", NAME, key, expected, digest.hexdigest()
                )
            os.replace(scratch, destination)
        except BaseException:
            scratch.unlink(missing_ok=True)
            raise
        return StoredBackup(key, size, expected, answer["LastModified"].timestamp())

    def _recorded_sha256(self, s3: Any, object_key: str) -> str | None:
        """The digest recorded with an object ("": none), None when it is gone meanwhile."""
        try:
            head = s3.head_object(Bucket=self.settings.bucket, Key=object_key)
        except botocore.exceptions.ClientError as err:
            if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise
        return str(head.get("Metadata", {}).get("sha256", ""))

    def _list(self, s3: Any, prefix: str) -> Listed:
        found: Listed = []
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.settings.bucket, Prefix=self._object_key(prefix)
        )
        for page in pages:
            for item in page.get("Contents", []):
                found.append((item["Key"], int(item["Size"]), item["LastModified"].timestamp()))
        return found

    # --- the event loop's side --------------------------------------------------------

    async def _s3(self) -> Any:
        """The client, made on first use: making one blocks (it reads the SDK's models)."""
        async with self._lock:
            if self._closed:
                raise BackupTargetError("use the target", NAME, "it is closed")
            if self._client is None:
                self._client = await asyncio.to_thread(self._new_client)
            return self._client

    @contextlib.contextmanager
    def _translated(self, action: str, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except BackupTargetError:
            raise
        except SDK_ERRORS as err:
            raise translate(
                action, err, endpoint=self.settings.endpoint, secret=self._secret, key=key
            ) from None


def create(ctx: BackupTargetContext) -> S3Target:
    return S3Target(parse_settings(ctx.config), _secret(ctx), ctx.logger)
