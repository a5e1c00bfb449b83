"""S3-compatible object storage through boto3 (AWS, or any endpoint that speaks S3)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from storage.base import Storage
from storage.errors import ObjectNotFound, StorageError, StorageUnavailable

_MISSING = {"404", "NoSuchKey", "NotFound"}


def _translate(exc: Exception, key: str) -> StorageError:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _MISSING:
            return ObjectNotFound(key)
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError"):
            return StorageUnavailable(f"{key}: {code or status}")
        return StorageError(f"{key}: {code}: {exc}")
    return StorageUnavailable(f"{key}: {type(exc).__name__}: {exc}")


class S3Storage(Storage):
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 max_connections: int = 16, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        config = Config(
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=max_connections,
            connect_timeout=5, read_timeout=30,
        )
        # endpoint_url None lets boto3 use AWS_ENDPOINT_URL or AWS itself
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url, config=config)

    def _put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                   ContentType=content_type, Metadata=metadata)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, key) from exc

    def _get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, key) from exc

    def _read_head(self, key: str, size: int) -> bytes:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{size - 1}")
            return bytes(body["Body"].read())[:size]
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, key) from exc

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except (ClientError, BotoCoreError) as exc:
            err = _translate(exc, key)
            if isinstance(err, ObjectNotFound):
                return False
            raise err from exc

    def _list(self, prefix: str) -> Iterator[str]:
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"]
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, prefix) from exc

    def _delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, key) from exc

    def _check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, self.bucket) from exc

    def create_bucket(self) -> bool:
        """Create the bucket if it does not exist; True if it was created."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError:
            pass
        try:
            self.client.create_bucket(Bucket=self.bucket)
            return True
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, self.bucket) from exc

    def head(self, key: str) -> dict[str, Any]:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, key) from exc

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s)
