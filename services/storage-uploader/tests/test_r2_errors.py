"""How botocore failures map onto our errors, for the cases an S3 server test cannot reach."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    NoCredentialsError,
    ParamValidationError,
)

from pixelbus.storage_uploader.errors import (
    StorageError,
    StoragePermanentError,
    StorageRetryableError,
)
from pixelbus.storage_uploader.providers.r2 import map_r2_error

ENDPOINT = "https://acct.r2.cloudflarestorage.com"


def client_error(status: int, code: str | None, message: str = "") -> ClientError:
    error = {"Code": code, "Message": message} if code else {}
    response = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


def mapped(exc: Exception, key: str | None = "tasks/t/a.png") -> StorageError:
    return map_r2_error(exc, bucket="outputs", key=key, endpoint=ENDPOINT)


@pytest.mark.parametrize(
    ("status", "code", "setting"),
    [
        (400, "ExpiredToken", "R2_SECRET_ACCESS_KEY"),
        (400, "AuthorizationHeaderMalformed", "R2_ACCOUNT_ID"),
        (403, "RequestTimeTooSkewed", "system clock"),
        (401, "Unauthorized", "R2_ACCESS_KEY_ID"),
        (403, None, "R2_ACCESS_KEY_ID"),
    ],
)
def test_refusals_that_will_not_heal_are_permanent_and_say_what_to_check(
    status: int, code: str | None, setting: str
) -> None:
    error = mapped(client_error(status, code))
    assert isinstance(error, StoragePermanentError)
    assert error.code == (code or str(status))
    assert setting in str(error)
    assert "writing 'tasks/t/a.png' to bucket 'outputs'" in str(error)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (503, "SlowDown"),
        (500, "InternalError"),
        (502, None),
        (429, None),
        (400, "RequestTimeout"),
        (408, None),
        (503, "ServiceUnavailable"),
    ],
)
def test_server_trouble_and_throttling_are_retryable(status: int, code: str | None) -> None:
    error = mapped(client_error(status, code))
    assert isinstance(error, StorageRetryableError)
    assert error.retryable
    assert error.provider == "r2"


def test_other_client_errors_are_permanent_with_the_server_message() -> None:
    error = mapped(client_error(400, "InvalidArgument", "Invalid content type"))
    assert isinstance(error, StoragePermanentError)
    assert str(error) == (
        "r2: request refused (400 InvalidArgument) writing 'tasks/t/a.png' to bucket "
        "'outputs': Invalid content type"
    )


def test_a_404_while_checking_the_bucket_means_no_such_bucket() -> None:
    error = mapped(client_error(404, "404"), key=None)
    assert isinstance(error, StoragePermanentError)
    assert error.code == "NoSuchBucket"
    assert "checking bucket 'outputs'" in str(error)
    assert "R2_BUCKET" in str(error)


@pytest.mark.parametrize(
    "exc",
    [ConnectionClosedError(endpoint_url=ENDPOINT), TimeoutError()],
    ids=["connection-closed", "timeout"],
)
def test_transport_failures_are_retryable_and_name_the_endpoint(exc: Exception) -> None:
    error = mapped(exc)
    assert isinstance(error, StorageRetryableError)
    assert error.code == type(exc).__name__
    assert ENDPOINT in str(error)


def test_missing_credentials_and_invalid_requests_are_permanent() -> None:
    assert isinstance(mapped(NoCredentialsError()), StoragePermanentError)
    invalid = mapped(ParamValidationError(report="Key must be a string"))
    assert isinstance(invalid, StoragePermanentError)
    assert invalid.code == "ParamValidationError"
