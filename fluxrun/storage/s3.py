"""Output files in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2...), through boto3.

Each file is the object ``{prefix}{key}/{name}``: the task's unguessable output key, so a
second attempt of a task overwrites its own files and nobody else's. Clients download with
no headers, from a presigned GET URL (default) or from a public base URL in front of the
bucket (a CDN). Presigning is local computation (a signature, no request), so Task/Detail
and Task/List can build many URLs per call.

Credentials come the AWS way (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, instance or task roles): fluxrun has no setting for them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError, PartialCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

from fluxrun.config import S3_MAX_PRESIGN_SECONDS, Settings
from fluxrun.errors import StorageUnavailable
from fluxrun.storage.base import OutputStorage, is_valid_address

# An image is a few MB: a store that does not answer within these is down, not slow. Retries
# (standard mode: throttling, 5xx and connection errors, with jittered back-off) absorb blips.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 3
# Written and deleted by check(); one fixed name, so repeated checks never pile objects up.
PROBE_NAME = ".fluxrun-write-check"

_CREDENTIALS_HELP = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the instance's role"
_REFUSED_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                        "InvalidClientTokenId", "TokenRefreshRequired"}
_WRONG_REGION = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}


class S3Storage(OutputStorage):
    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        prefix: str = "outputs/",
        region: str | None = None,
        url_mode: str = "presigned",
        public_base_url: str | None = None,
        presign_seconds: int = S3_MAX_PRESIGN_SECONDS,
        addressing: str = "auto",
    ) -> None:
        if url_mode not in ("presigned", "public"):
            raise ValueError(f"FLUXRUN_S3_URL_MODE: {url_mode!r} is neither presigned nor public")
        if url_mode == "public" and not public_base_url:
            raise ValueError("FLUXRUN_S3_PUBLIC_BASE_URL: required when FLUXRUN_S3_URL_MODE=public")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.prefix = prefix
        self.url_mode = url_mode
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.presign_seconds = presign_seconds
        config = Config(
            signature_version="s3v4",  # SigV4: presigned URLs carry X-Amz-Expires, up to 7 days
            s3={"addressing_style": addressing},
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
            # botocore >= 1.36 adds CRC checksums to every upload by default; several
            # S3-compatible stores refuse or mishandle them. Send them only where S3 requires one.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # An own session: boto3's default session is not safe to share between threads.
        session = boto3.session.Session(region_name=region)
        self.client: Any = session.client("s3", endpoint_url=endpoint_url, config=config)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        if not settings.s3_bucket:
            raise ValueError("FLUXRUN_S3_BUCKET is not set")
        return cls(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            prefix=settings.s3_prefix,
            region=settings.s3_region,
            url_mode=settings.s3_url_mode,
            public_base_url=settings.s3_public_base_url,
            presign_seconds=settings.s3_presign_seconds,
            addressing=settings.s3_addressing,
        )

    def object_key(self, key: str, name: str) -> str:
        """The object behind an output address; refuses anything fluxrun did not make."""
        if not is_valid_address(key, name):
            raise ValueError(f"invalid output address {key!r}/{name!r}")
        return f"{self.prefix}{key}/{name}"

    def put(self, key: str, name: str, data: bytes, content_type: str) -> int:
        object_key = self.object_key(key, name)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=object_key,
                Body=data,
                ContentType=content_type,
                # Like the local /files route: a task's files never change once written.
                CacheControl="private, max-age=31536000, immutable",
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(self._explain(exc, f"writing {object_key}")) from exc
        return len(data)

    def url(self, key: str, name: str, base_url: str) -> str:
        object_key = self.object_key(key, name)
        if self.url_mode == "public":
            return f"{self.public_base_url}/{quote(object_key)}"
        try:
            # Signed locally: no request to the store.
            return str(self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": object_key}, ExpiresIn=self.presign_seconds
            ))
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(self._explain(exc, "signing an output URL")) from exc

    def check(self) -> None:
        probe = f"{self.prefix}{PROBE_NAME}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok", ContentType="text/plain")
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(self._explain(exc, "writing a probe object")) from exc
        try:
            self.client.delete_object(Bucket=self.bucket, Key=probe)
        except ClientError as exc:
            # fluxrun never deletes outputs, so a policy without s3:DeleteObject is fine: the
            # fixed-name probe is overwritten by the next check instead of piling up.
            if _code(exc) != "AccessDenied":
                raise StorageUnavailable(self._explain(exc, "deleting the probe object")) from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(self._explain(exc, "deleting the probe object")) from exc

    def describe(self) -> str:
        where = self.endpoint_url or "AWS S3"
        urls = (f"public URLs under {self.public_base_url}" if self.url_mode == "public"
                else f"presigned URLs valid {self.presign_seconds} s")
        return f"s3://{self.bucket}/{self.prefix} at {where}, {urls}"

    def _explain(self, exc: Exception, doing: str) -> str:
        """One line: the setting to look at, what was wrong, and what the store said."""
        bucket, endpoint = f"bucket {self.bucket!r}", self.client.meta.endpoint_url
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return f"FLUXRUN_S3_BUCKET: no usable AWS credentials for {bucket} ({exc}): set {_CREDENTIALS_HELP}"
        if isinstance(exc, (BotoConnectionError, HTTPClientError)):
            setting = "FLUXRUN_S3_ENDPOINT_URL" if self.endpoint_url else "FLUXRUN_S3_REGION"
            return f"{setting}: cannot reach the S3 endpoint {endpoint} while {doing} ({exc})"
        if not isinstance(exc, ClientError):
            return f"FLUXRUN_S3_BUCKET: {bucket} at {endpoint}: {doing} failed ({exc})"
        code, said = _code(exc), _said(exc)
        if code == "NoSuchBucket":
            return f"FLUXRUN_S3_BUCKET: there is no {bucket} at {endpoint} ({said}): create it or fix the name"
        if code in _REFUSED_CREDENTIALS:
            return (f"FLUXRUN_S3_BUCKET: the store at {endpoint} refused the AWS credentials ({said}): "
                    f"check {_CREDENTIALS_HELP}")
        if code in _WRONG_REGION:
            return f"FLUXRUN_S3_REGION: {bucket} is in another region than {endpoint} ({said}): set its region"
        if code in ("AccessDenied", "AllAccessDisabled", "403"):
            return (f"FLUXRUN_S3_BUCKET: access denied to {bucket} at {endpoint} while {doing} ({said}): "
                    f"the credentials ({_CREDENTIALS_HELP}) need s3:PutObject on {self.prefix or '/'}*")
        return f"FLUXRUN_S3_BUCKET: {bucket} at {endpoint} failed while {doing} ({said})"


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _said(exc: ClientError) -> str:
    message = exc.response.get("Error", {}).get("Message")
    return f"{_code(exc)}: {message}" if message else _code(exc)
