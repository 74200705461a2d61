"""Fixtures of the storage-uploader tests."""

from __future__ import annotations

# The S3 server fixtures live in the test kit; imported here until its pytest plugin
# exports them.
from pixelbus.testkit.s3_server import s3_bucket, s3_server

__all__ = ["s3_bucket", "s3_server"]
