"""Output files in an S3-compatible bucket: moto's S3 server on loopback, spoken to over HTTP.

The storage alone (objects, content types, presigned and public URLs, refused addresses,
clear check() errors), the settings and the command line's refusals, the worker in-process
writing a task's image that Task/Detail's url then downloads, and a real `fluxrun serve`.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pydantic
import pytest
from PIL import Image

from fluxrun.wire import task_wire
from fluxrun.config import Settings
from fluxrun.errors import StorageUnavailable
from fluxrun.storage import LocalStorage, open_storage
from fluxrun.storage.s3 import S3Storage
from fluxrun.store.base import TaskStore
from tests.fakes.s3 import FAKE_CREDENTIALS, MotoS3
from tests.integration.server import Server, free_port

KEY = "0123456789abcdef0123456789abcdef01234567"
PNG = b"\x89PNG\r\n\x1a\n" + b"not really an image, but bytes to compare" * 10


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Fake credentials the AWS way, and nothing of the machine's own AWS configuration."""
    env = {**FAKE_CREDENTIALS, "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def bucket(moto: MotoS3) -> str:
    return moto.new_bucket()


def s3_settings(tmp_path: Path, moto: MotoS3, bucket: str, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path, s3_bucket=bucket, s3_endpoint_url=moto.url, s3_addressing="path", **overrides)


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


# -- the storage alone ----------------------------------------------------------------------------
def test_put_writes_the_object_under_the_output_key_with_its_type_and_a_second_put_replaces_it(
    tmp_path: Path, moto: MotoS3, bucket: str
) -> None:
    storage = open_storage(s3_settings(tmp_path, moto, bucket))
    assert isinstance(storage, S3Storage)
    assert storage.put(KEY, "0.png", PNG, "image/png") == len(PNG)
    assert storage.put(KEY, "1.jpeg", b"jpeg bytes", "image/jpeg") == len(b"jpeg bytes")
    s3 = moto.client()
    stored = s3.get_object(Bucket=bucket, Key=f"outputs/{KEY}/0.png")
    assert stored["Body"].read() == PNG and stored["ContentType"] == "image/png"
    assert s3.head_object(Bucket=bucket, Key=f"outputs/{KEY}/1.jpeg")["ContentType"] == "image/jpeg"

    # A second attempt of the task writes the same names again: the objects are replaced.
    assert storage.put(KEY, "0.png", b"attempt 2", "image/png") == len(b"attempt 2")
    assert s3.get_object(Bucket=bucket, Key=f"outputs/{KEY}/0.png")["Body"].read() == b"attempt 2"
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted((o["Key"], o["Size"]) for o in listed) == [(f"outputs/{KEY}/0.png", 9), (f"outputs/{KEY}/1.jpeg", 10)]


def test_a_custom_prefix_is_a_folder_and_an_empty_one_is_the_bucket_root(
    tmp_path: Path, moto: MotoS3, bucket: str
) -> None:
    open_storage(s3_settings(tmp_path, moto, bucket, s3_prefix="/fluxrun/images")).put(KEY, "0.png", PNG, "image/png")
    open_storage(s3_settings(tmp_path, moto, bucket, s3_prefix="")).put(KEY, "0.png", PNG, "image/png")
    keys = sorted(o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"{KEY}/0.png", f"fluxrun/images/{KEY}/0.png"]


def test_a_presigned_url_downloads_the_exact_bytes_with_no_headers_for_the_configured_lifetime(
    tmp_path: Path, moto: MotoS3, bucket: str
) -> None:
    storage = open_storage(s3_settings(tmp_path, moto, bucket, s3_presign_seconds=3600))
    storage.put(KEY, "0.png", PNG, "image/png")
    url = storage.url(KEY, "0.png", "http://fluxrun.example")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{moto.url}/{bucket}/outputs/{KEY}/0.png"
    query = parse_qs(parts.query)
    assert query["X-Amz-Expires"] == ["3600"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in url

    with httpx.Client() as plain:  # no auth, no headers of ours: what a browser or curl does
        download = plain.get(url)
        unsigned = plain.get(url.split("?")[0])
    assert download.status_code == 200 and download.content == PNG
    assert download.headers["content-type"] == "image/png"
    assert unsigned.status_code == 403  # the bucket is private: the signature is what opens it

    default = open_storage(s3_settings(tmp_path, moto, bucket)).url(KEY, "0.png", "http://fluxrun.example")
    assert parse_qs(urlsplit(default).query)["X-Amz-Expires"] == ["604800"]  # 7 days, SigV4's longest


def test_presigning_makes_no_request_to_the_store(tmp_path: Path) -> None:
    # Task/Detail and Task/List build a URL per output: signing must not call the store.
    storage = S3Storage("any-bucket", endpoint_url=closed_port_url(), addressing="path")
    urls = [storage.url(KEY, f"{index}.png", "http://fluxrun.example") for index in range(50)]
    assert len(set(urls)) == 50 and all("X-Amz-Signature=" in url for url in urls)


def test_public_mode_urls_are_the_base_url_plus_the_object_key(tmp_path: Path, moto: MotoS3, bucket: str) -> None:
    # What an operator does for public mode: a policy letting anyone read the outputs (or a CDN
    # allowed to). With the bucket's own path-style address as the base, URLs download unsigned.
    moto.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/outputs/*"}
    ]}))
    storage = open_storage(s3_settings(tmp_path, moto, bucket, s3_url_mode="public",
                                       s3_public_base_url=f"{moto.url}/{bucket}/"))
    storage.put(KEY, "0.png", PNG, "image/png")
    url = storage.url(KEY, "0.png", "http://fluxrun.example")
    assert url == f"{moto.url}/{bucket}/outputs/{KEY}/0.png"
    download = httpx.get(url)
    assert download.status_code == 200 and download.content == PNG

    cdn = open_storage(s3_settings(tmp_path, moto, bucket, s3_url_mode="public", s3_prefix="",
                                   s3_public_base_url="https://cdn.example.com/images"))
    assert cdn.url(KEY, "1.jpeg", "http://fluxrun.example") == f"https://cdn.example.com/images/{KEY}/1.jpeg"


BAD_ADDRESSES = [
    ("../" + KEY[3:], "0.png"),
    (KEY, "../0.png"),
    (KEY, "0.png/../../x.png"),
    (KEY.upper(), "0.png"),
    (KEY[:-1], "0.png"),
    (KEY, "0.gif"),
    (KEY + "/..", "0.png"),
    ("", "0.png"),
]


def test_addresses_fluxrun_did_not_make_are_refused(tmp_path: Path, moto: MotoS3, bucket: str) -> None:
    presigned = open_storage(s3_settings(tmp_path, moto, bucket))
    public = open_storage(s3_settings(tmp_path, moto, bucket, s3_url_mode="public",
                                      s3_public_base_url="https://cdn.example.com"))
    for storage in (presigned, public):
        for key, name in BAD_ADDRESSES:
            with pytest.raises(ValueError, match="invalid output address"):
                storage.put(key, name, PNG, "image/png")
            with pytest.raises(ValueError, match="invalid output address"):
                storage.url(key, name, "http://fluxrun.example")
    assert "Contents" not in moto.client().list_objects_v2(Bucket=bucket)


def test_check_passes_on_a_writable_bucket_and_leaves_nothing_behind(tmp_path: Path, moto: MotoS3, bucket: str) -> None:
    storage = open_storage(s3_settings(tmp_path, moto, bucket))
    storage.check()
    storage.check()
    assert "Contents" not in moto.client().list_objects_v2(Bucket=bucket)


def test_check_names_the_bucket_setting_when_the_bucket_does_not_exist(tmp_path: Path, moto: MotoS3) -> None:
    storage = open_storage(s3_settings(tmp_path, moto, "no-such-bucket-here"))
    with pytest.raises(StorageUnavailable) as caught:
        storage.check()
    assert str(caught.value) == (f"FLUXRUN_S3_BUCKET: there is no bucket 'no-such-bucket-here' at {moto.url} "
                                 "(NoSuchBucket: The specified bucket does not exist): create it or fix the name")


def test_check_names_the_endpoint_setting_when_the_endpoint_is_unreachable(tmp_path: Path) -> None:
    endpoint = closed_port_url()
    storage = open_storage(Settings(data_dir=tmp_path, s3_bucket="outputs", s3_endpoint_url=endpoint))
    with pytest.raises(StorageUnavailable) as caught:
        storage.check()
    message = str(caught.value)
    assert message.startswith(f"FLUXRUN_S3_ENDPOINT_URL: cannot reach the S3 endpoint {endpoint} "
                              "while writing a probe object (Could not connect to the endpoint URL")
    assert "\n" not in message


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoS3, dict[str, dict[str, str]]]]:
    """A store that checks credentials and policies: bucket 'guarded', and the keys of two IAM
    users: 'reader' may only read, 'writer' may write but not delete."""
    setup_calls = 6  # create_bucket, 2 x create_user, 2 x create_access_key, put_user_policy
    server = MotoS3(tmp_path_factory.mktemp("moto-guarded") / "moto.log", auth_after=setup_calls).start()
    server.client().create_bucket(Bucket="guarded")
    iam = server.client("iam")
    keys = {}
    for user in ("reader", "writer"):
        iam.create_user(UserName=user)
        made = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = {"AWS_ACCESS_KEY_ID": made["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": made["SecretAccessKey"]}
    iam.put_user_policy(UserName="writer", PolicyName="put-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::guarded/*"}],
    }))
    yield server, keys
    server.stop()


def test_check_names_access_denied_and_refused_credentials(
    tmp_path: Path, guarded: tuple[MotoS3, dict[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, keys = guarded

    def check_as(credentials: dict[str, str]) -> None:
        for name, value in credentials.items():
            monkeypatch.setenv(name, value)
        open_storage(s3_settings(tmp_path, server, "guarded")).check()

    with pytest.raises(StorageUnavailable) as denied:
        check_as(keys["reader"])
    assert str(denied.value) == (
        f"FLUXRUN_S3_BUCKET: access denied to bucket 'guarded' at {server.url} while writing a probe object "
        "(AccessDenied: Access Denied): the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
        "or the instance's role) need s3:PutObject on outputs/*")
    with pytest.raises(StorageUnavailable) as refused:
        check_as({"AWS_ACCESS_KEY_ID": "AKIANOBODYKNOWS", "AWS_SECRET_ACCESS_KEY": "x"})
    assert str(refused.value).startswith(f"FLUXRUN_S3_BUCKET: the store at {server.url} refused the AWS credentials "
                                         "(InvalidAccessKeyId: ")
    check_as(keys["writer"])  # fluxrun never deletes outputs: writing is all it needs


def test_without_a_bucket_outputs_stay_local_files(tmp_path: Path) -> None:
    storage = open_storage(Settings(data_dir=tmp_path, s3_bucket=""))
    assert isinstance(storage, LocalStorage) and storage.root == tmp_path / "outputs"


# -- settings and the command line ----------------------------------------------------------------
def test_settings_refuse_public_mode_without_a_base_url_and_too_long_presigned_urls(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError) as public:
        Settings(data_dir=tmp_path, s3_bucket="b", s3_url_mode="public")
    [error] = public.value.errors()
    assert error["loc"] == ("s3_public_base_url",) and "required when FLUXRUN_S3_URL_MODE=public" in error["msg"]
    with pytest.raises(pydantic.ValidationError) as lifetime:
        Settings(data_dir=tmp_path, s3_bucket="b", s3_presign_seconds=604801)
    assert lifetime.value.errors()[0]["loc"] == ("s3_presign_seconds",)
    with pytest.raises(pydantic.ValidationError, match="not an http:// or https:// URL"):
        Settings(data_dir=tmp_path, s3_bucket="b", s3_endpoint_url="minio:9000")


def _fluxrun_api(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fluxrun", "api", "--data-dir", str(tmp_path / "data"),
                           "--port", str(free_port())],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env}, timeout=120)


def test_the_api_refuses_to_start_with_one_line_naming_the_setting(
    tmp_path: Path, moto: MotoS3, aws_env: dict[str, str]
) -> None:
    public = _fluxrun_api(tmp_path, {"FLUXRUN_S3_BUCKET": "b", "FLUXRUN_S3_URL_MODE": "public"})
    assert public.returncode == 2
    assert public.stderr.strip() == (
        "FLUXRUN_S3_PUBLIC_BASE_URL: required when FLUXRUN_S3_URL_MODE=public: the URL in front of the bucket "
        "that clients download from (e.g. https://cdn.example.com); or set FLUXRUN_S3_URL_MODE=presigned")

    missing = _fluxrun_api(tmp_path, {**aws_env, "FLUXRUN_S3_BUCKET": "not-there", "FLUXRUN_S3_ENDPOINT_URL": moto.url,
                                      "FLUXRUN_S3_ADDRESSING": "path"})
    assert missing.returncode == 78, missing.stderr
    last_line = missing.stderr.strip().splitlines()[-1]
    assert last_line.startswith("FLUXRUN_S3_BUCKET: there is no bucket 'not-there'"), missing.stderr


# -- the worker in-process -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 (torch-side type, imported lazily)
    from fluxrun.backends.base import BackendOptions
    from fluxrun.backends.registry import BackendCache

    cache = BackendCache(BackendOptions(models="tiny", models_dir=tmp_path_factory.mktemp("models")))
    cache.get("flux1")
    return cache


def _run_one_pixel_task(settings: Settings, store: TaskStore, backends: object):  # noqa: ANN202
    from fluxrun.tools.catalog import find_tool
    from fluxrun.worker.loop import Worker

    tool = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
    project = store.create_project("p", "apikey")
    params = tool.validate({"prompt": "a cat", "steps": 2, "width": 128, "height": 64})
    task = store.create_task(project.id, tool.slug, params, tool.cps)
    storage = open_storage(settings)
    assert Worker(settings, store, storage, backends, worker_id="test/s3").run_once()
    return store.get_task(project.id, task_id=task.id), storage


def test_the_worker_writes_the_image_to_the_bucket_and_task_detail_url_downloads_it(
    tmp_path: Path, moto: MotoS3, bucket: str, store: TaskStore, backends: object
) -> None:
    done, storage = _run_one_pixel_task(s3_settings(tmp_path, moto, bucket, s3_presign_seconds=600), store, backends)
    assert done.pexit == 0, done.debugerror
    [output] = task_wire(done, storage, "http://fluxrun.example")["outputs"]
    assert output["name"] == "0.png" and output["contenttype"] == "image/png"
    stored = moto.client().get_object(Bucket=bucket, Key=f"outputs/{done.output_key}/0.png")
    in_bucket = stored["Body"].read()
    assert stored["ContentType"] == "image/png" and int(output["size"]) == len(in_bucket)

    assert output["url"].startswith(f"{moto.url}/{bucket}/outputs/{done.output_key}/0.png?")
    download = httpx.get(output["url"])
    assert download.status_code == 200 and download.content == in_bucket
    assert Image.open(io.BytesIO(download.content)).size == (128, 64)
    assert not (tmp_path / "outputs").exists()  # nothing went to local files


def test_a_task_whose_image_cannot_be_stored_fails_with_the_storage_message(
    tmp_path: Path, moto: MotoS3, store: TaskStore, backends: object
) -> None:
    done, _ = _run_one_pixel_task(s3_settings(tmp_path, moto, "bucket-gone"), store, backends)
    assert done.pexit == 1 and done.outputs == ()
    assert done.debugerror.startswith("FLUXRUN_S3_BUCKET: there is no bucket 'bucket-gone'"), done.debugerror


# -- a real `fluxrun serve` -------------------------------------------------------------------------
@pytest.mark.slow
def test_serve_stores_a_pixel_art_image_in_the_bucket_and_its_url_downloads(
    tmp_path: Path, moto: MotoS3, bucket: str, aws_env: dict[str, str]
) -> None:
    server = Server(tmp_path / "data", FLUXRUN_S3_BUCKET=bucket, FLUXRUN_S3_ENDPOINT_URL=moto.url,
                    FLUXRUN_S3_ADDRESSING="path", FLUXRUN_S3_PREFIX="fluxrun", **aws_env).start()
    try:
        run = server.post("/v1/Run/desertPixel/Flat-Pixel-Art-FLUX",
                          {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64}).json()
        assert run["result"] is True, run
        task = server.wait_for(run["taskid"])
        assert task["status"] == "task_postprocess_end" and task["pexit"] == "0", (task, server.log()[-4000:])
        [output] = task["outputs"]
        key = urlsplit(output["url"]).path.split("/")[-2]
        assert output["url"].startswith(f"{moto.url}/{bucket}/fluxrun/{key}/0.png?X-Amz-")

        in_bucket = moto.client().get_object(Bucket=bucket, Key=f"fluxrun/{key}/0.png")["Body"].read()
        download = httpx.get(output["url"])
        assert download.status_code == 200 and download.headers["content-type"] == "image/png"
        assert download.content == in_bucket and int(output["size"]) == len(in_bucket)
        assert Image.open(io.BytesIO(download.content)).size == (64, 64)

        # Outputs live in the bucket: the API's /files route has nothing to serve.
        assert httpx.get(f"{server.base_url}/files/{key}/0.png").status_code == 404
        assert f"outputs: s3://{bucket}/fluxrun/ at {moto.url}" in server.log()
    finally:
        server.stop()
