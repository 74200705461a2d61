"""The end-to-end face swap with each storage provider, chosen by setting alone, and the
upload failures a task must survive or report: refused credentials (FAILED at once, with
the setting to fix, no retry storm) and a provider answering 503 (retried, then COMPLETED).

Every provider is a real HTTP server on a loopback port: the S3 server (moto) for ``r2``,
the test kit's GCS server for ``gcs`` (through ``STORAGE_EMULATOR_HOST``, checking OAuth
tokens), the third-party ``gcp-storage-emulator`` for ``gcs`` too (the face swap only: it
checks no credentials) and the kit's Cloudflare Images server for ``cf_images``. R2 serves public objects from
a bucket's public URL; here a small reader in front of the S3 server plays that part.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from pixelbus.contracts.events import TaskFailed
from pixelbus.contracts.subjects import OUTPUTS_BUCKET, TASK_STREAM
from pixelbus.contracts.task import TaskStatus
from pixelbus.testkit.cf_images_server import CfImagesServer
from pixelbus.testkit.gcs_emulator import GcsEmulator
from pixelbus.testkit.gcs_server import GcsServer
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.s3_server import FaultyProxy, S3Credentials, S3Server
from pixelbus.testkit.waiting import EventLog, wait_for_state
from tests.conftest import data_uri, package_file
from tests.stack import running_stack
from tests.test_e2e import test_face_swap_of_two_real_photos_completes as face_swap_e2e

pytestmark = pytest.mark.e2e

FAST_RETRIES = {"PIXELBUS_STORAGE_RETRY_BASE_S": "0.01", "PIXELBUS_STORAGE_RETRY_MAX_S": "0.05"}


class PublicBucket:
    """A bucket's public URL: anonymous GETs of its objects (as R2 serves them)."""

    def __init__(self, server: S3Server, bucket: str) -> None:
        client = server.client()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    obj = client.get_object(Bucket=bucket, Key=self.path.lstrip("/"))
                except ClientError:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = obj["Body"].read()
                self.send_response(200)
                self.send_header("Content-Type", obj["ContentType"])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()


@pytest.fixture
def public_bucket(s3_server: S3Server, s3_bucket: str) -> Iterator[PublicBucket]:
    public = PublicBucket(s3_server, s3_bucket)
    yield public
    public.close()


def r2_env(
    server: S3Server,
    bucket: str,
    *,
    endpoint: str | None = None,
    creds: S3Credentials | None = None,
) -> dict[str, str]:
    creds = creds or server.credentials
    return {
        "STORAGE_PROVIDER": "r2",
        "R2_ACCESS_KEY_ID": creds.access_key_id,
        "R2_SECRET_ACCESS_KEY": creds.secret_access_key,
        "R2_BUCKET": bucket,
        "PIXELBUS_R2_ENDPOINT_URL": endpoint or server.endpoint_url,
        "R2_PUBLIC_URL": "https://cdn.example.com",
    }


def gcs_env(
    server: GcsServer | GcsEmulator, bucket: str, credentials: Path | None
) -> dict[str, str]:
    env = {
        "STORAGE_PROVIDER": "gcs",
        "PIXELBUS_GCS_BUCKET": bucket,
        "STORAGE_EMULATOR_HOST": server.url,
        "PIXELBUS_GCS_PUBLIC_URL": f"{server.url}/{bucket}",
    }
    if credentials is not None:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(credentials)
    return env


def cf_env(server: CfImagesServer, **extra: str) -> dict[str, str]:
    return {
        "STORAGE_PROVIDER": "cf_images",
        "CLOUDFLARE_ACCOUNT_ID": server.account_id,
        "CLOUDFLARE_API_TOKEN": server.api_token,
        "PIXELBUS_CF_IMAGES_API_URL": server.api_url,
        **extra,
    }


Storage = tuple[dict[str, str], Callable[[], list[str]]]


@pytest.fixture(params=["local", "r2", "gcs", "gcs-emulator", "cf_images"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The environment that selects a provider, and a way to list the keys it holds."""
    name = request.param
    if name == "local":
        root = tmp_path / "storage"
        return {"STORAGE_PROVIDER": "local"}, lambda: [
            str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
        ]
    if name == "r2":
        s3: S3Server = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        public: PublicBucket = request.getfixturevalue("public_bucket")
        env = {**r2_env(s3, bucket), "R2_PUBLIC_URL": public.url}
        listing = s3.client().list_objects_v2
        return env, lambda: [o["Key"] for o in listing(Bucket=bucket).get("Contents", [])]
    if name == "gcs":
        gcs: GcsServer = request.getfixturevalue("gcs_server")
        bucket = gcs.create_bucket()
        env = gcs_env(gcs, bucket, gcs.service_account(tmp_path))
        return env, lambda: [name for (b, name) in gcs.objects if b == bucket]
    if name == "gcs-emulator":  # the third-party gcp-storage-emulator: no credentials
        emulator: GcsEmulator = request.getfixturevalue("gcs_emulator")
        bucket = emulator.create_bucket()
        return gcs_env(emulator, bucket, None), lambda: emulator.keys(bucket)
    cf: CfImagesServer = request.getfixturevalue("cf_images_server")
    return cf_env(cf), lambda: list(cf.images)


async def test_the_face_swap_completes_with_each_provider_chosen_by_setting(
    nats_server: NatsServer,
    tmp_path: Path,
    storage: Storage,
    astronaut: Path,
    grace_hopper: Path,
) -> None:
    env, stored_keys = storage
    async with running_stack(nats_server.url, tmp_path, **env) as stack:
        await face_swap_e2e(stack, astronaut, grace_hopper)
        kv = await stack.kv()
        [task_id] = [k for k in await kv.keys() if k.startswith("task_")]
        state = await wait_for_state(kv, task_id, lambda s: s.is_final, 5)
        info = await stack.nc.jetstream().stream_info(
            f"OBJ_{OUTPUTS_BUCKET}", subjects_filter=f"$O.{OUTPUTS_BUCKET}.>"
        )
    [output] = state.outputs
    assert output.provider == env["STORAGE_PROVIDER"]
    assert output.key.startswith("tasks/") and output.key.endswith(f"/{task_id}/result.png")
    assert stored_keys() == [output.key]
    # the temporary Object Store entries are gone: only their deletion markers remain
    subjects = info.state.subjects or {}
    assert subjects and not [s for s in subjects if ".C." in s], subjects


async def test_refused_credentials_fail_the_task_at_once_naming_the_setting(
    nats_server: NatsServer, tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    unknown = S3Credentials("AKIAUNKNOWNKEY000000", "whatever")
    with FaultyProxy(s3_server.endpoint_url) as proxy:
        env = {**r2_env(s3_server, s3_bucket, endpoint=proxy.endpoint_url, creds=unknown)}
        state, failures = await run_probe(nats_server, tmp_path, env)
    assert state.status is TaskStatus.FAILED
    assert state.error is not None and state.error.code == "InvalidAccessKeyId"
    assert "R2_ACCESS_KEY_ID" in state.error.message and state.error.message.startswith("r2: ")
    assert state.attempts == 1
    # the start-up check (HeadBucket), then one PutObject: no retry, in-process or redelivered
    assert proxy.requests == 2
    assert len(failures) == 1 and failures[0].final and not failures[0].retryable


@pytest.mark.parametrize("provider", ["gcs", "cf_images"])
async def test_refused_credentials_of_the_other_providers_name_their_setting(
    nats_server: NatsServer,
    tmp_path: Path,
    gcs_server: GcsServer,
    cf_images_server: CfImagesServer,
    provider: str,
) -> None:
    if provider == "gcs":
        bucket = gcs_server.create_bucket()
        unregistered = gcs_server.service_account(tmp_path, registered=False)
        env, setting = gcs_env(gcs_server, bucket, unregistered), "GOOGLE_APPLICATION_CREDENTIALS"
    else:
        env = cf_env(
            cf_images_server, CLOUDFLARE_API_TOKEN="revoked", PIXELBUS_CF_IMAGES_FALLBACK="none"
        )
        setting = "CLOUDFLARE_API_TOKEN"
    state, failures = await run_probe(nats_server, tmp_path, env, workflow_output_image=True)
    assert state.status is TaskStatus.FAILED and state.attempts == 1
    assert state.error is not None and setting in state.error.message
    assert len(failures) == 1 and failures[0].final
    # one request for the start-up check, one for the upload: nothing retried
    if provider == "gcs":
        assert gcs_server.grants == 2 and gcs_server.objects == {}
    else:
        assert len(cf_images_server.requests) == 2 and cf_images_server.images == {}


async def test_a_503_is_retried_in_process_and_the_task_completes(
    nats_server: NatsServer, tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    # the uploader's start-up check takes the first 503, the upload the next two
    with FaultyProxy(s3_server.endpoint_url, fail_first=3, status=503) as proxy:
        env = {**r2_env(s3_server, s3_bucket, endpoint=proxy.endpoint_url), **FAST_RETRIES}
        state, failures = await run_probe(nats_server, tmp_path, env)
    assert state.status is TaskStatus.COMPLETED
    assert (proxy.faults, proxy.requests) == (3, 4)  # 503, 503, 503, then the object went in
    assert failures == []  # healed within the first delivery
    [output] = state.outputs
    keys = s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [k["Key"] for k in keys] == [output.key]


async def test_503s_beyond_the_in_process_retries_heal_by_redelivery(
    nats_server: NatsServer, tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    # the start-up check, then three tries of the first delivery, then the second delivery
    with FaultyProxy(s3_server.endpoint_url, fail_first=4, status=503) as proxy:
        env = {**r2_env(s3_server, s3_bucket, endpoint=proxy.endpoint_url), **FAST_RETRIES}
        state, failures = await run_probe(nats_server, tmp_path, env)
    assert state.status is TaskStatus.COMPLETED
    assert (proxy.faults, proxy.requests) == (4, 5)
    assert len(failures) == 1 and failures[0].retryable and not failures[0].final
    assert failures[0].code == "SlowDown"


async def run_probe(
    nats_server: NatsServer,
    tmp_path: Path,
    env: dict[str, str],
    *,
    workflow_output_image: bool = False,
) -> tuple[Any, list[TaskFailed]]:
    """Run a task through the stack; its final state and the upload failures published.

    The ``probe`` workflow's output is a JSON file; with ``workflow_output_image`` a face
    swap of two photos is run instead (an image, for Cloudflare Images).
    """
    async with running_stack(nats_server.url, tmp_path, **env) as stack:
        log = await EventLog.open(stack.nc)
        if workflow_output_image:
            photo = package_file("skimage", "data", "astronaut.png")
            face = package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")
            body = {
                "workflow": "face_swap",
                "environment": "face_swap",
                "params": {
                    "input_data": {
                        "wf_json": {
                            "source_url": data_uri(photo, "image/png"),
                            "target_url": data_uri(face, "image/jpeg"),
                            "resolution": "128x150",
                        }
                    }
                },
            }
        else:
            body = {"workflow": "probe", "environment": "face_swap"}
        created = await stack.http.post("/api/tasks/create", json=body)
        task_id = created.json()["taskId"]
        state = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final, 30)
        info = await stack.nc.jetstream().stream_info(TASK_STREAM)
        assert info.state.messages > 0
    return state, log.of(task_id, TaskFailed)
