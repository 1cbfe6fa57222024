"""docker/s3/: each service's S3 account reaches what its policy says and nothing else.

The policies are the JSON files MinIO's `minio-init` loads; here they run on moto's S3 server (in
this process, on a free port) through `docker/s3/moto_init.py`, the Debian-built stack's `minio-init`,
which writes each service's keys into its credentials file. Every call below is one the pipeline
makes (DVC's push and status, MLflow's artifact store, the prediction log's writer and reader, gc).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.fast

S3 = REPO / "docker" / "s3"


@pytest.fixture(scope="module")
def accounts(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    from pipeline.serving.package import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    keys = tmp_path_factory.mktemp("s3-keys")
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "root",
        "AWS_SECRET_ACCESS_KEY": "root-secret",
        "SHOPML_S3_KEYS_DIR": str(keys),
    }
    try:
        for _ in range(2):  # the second start of a stack finds everything there and changes nothing
            done = subprocess.run(
                [sys.executable, str(S3 / "moto_init.py")], env=env, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, done.stderr[-3000:]
        assert "already there" in done.stdout, done.stdout
        yield endpoint, keys
    finally:
        server.stop()


def _client(endpoint: str, credentials: Path | None = None, **keys: str):
    import boto3
    import botocore.session

    core = botocore.session.Session()
    if credentials is not None:  # what a service does: its own credentials file, no key in the environment
        core.set_config_variable("credentials_file", str(credentials))
    return boto3.session.Session(botocore_session=core, **keys).client(
        "s3", endpoint_url=endpoint, region_name="us-east-1"
    )


def _outcome(call) -> str:
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"]
    return "allowed"


def test_each_service_reaches_its_buckets_only_and_the_root_keys_stop_working(accounts, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    endpoint, keys = accounts
    airflow, mlflow, serve = (_client(endpoint, keys / s / "credentials") for s in ("airflow", "mlflow", "serve"))
    big = b"x" * (6 * 1024 * 1024)  # over the 5 MiB part: a multipart upload, as s3fs makes for large files

    def multipart(client, bucket: str, key: str) -> None:
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=big)
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )

    seen = {
        # Airflow: the DVC remote read and written; the prediction log read and pruned; not MLflow's.
        "airflow put dvc": _outcome(lambda: airflow.put_object(Bucket="shopml-dvc", Key="dataset/a", Body=b"1")),
        "airflow multipart dvc": _outcome(lambda: multipart(airflow, "shopml-dvc", "dataset/big")),
        "airflow head dvc": _outcome(lambda: airflow.head_object(Bucket="shopml-dvc", Key="dataset/a")),
        "airflow list dvc": _outcome(lambda: airflow.list_objects_v2(Bucket="shopml-dvc", Prefix="dataset/")),
        "airflow read mlflow": _outcome(lambda: airflow.list_objects_v2(Bucket="shopml-mlflow")),
        "airflow write log": _outcome(
            lambda: airflow.put_object(Bucket="shopml-predictions", Key="log/forged", Body=b"1")
        ),
        # The served model: appends to the log, reads nothing, writes nowhere else.
        "serve append log": _outcome(
            lambda: serve.put_object(Bucket="shopml-predictions", Key="log/next_item/a.parquet", Body=b"1")
        ),
        "serve find log bucket": _outcome(lambda: serve.head_bucket(Bucket="shopml-predictions")),
        "serve read log": _outcome(
            lambda: serve.get_object(Bucket="shopml-predictions", Key="log/next_item/a.parquet")
        ),
        "serve write outside log": _outcome(
            lambda: serve.put_object(Bucket="shopml-predictions", Key="other", Body=b"1")
        ),
        "serve read dvc": _outcome(lambda: serve.get_object(Bucket="shopml-dvc", Key="dataset/a")),
        "serve write mlflow": _outcome(lambda: serve.put_object(Bucket="shopml-mlflow", Key="x", Body=b"1")),
        # MLflow: its artifacts, nothing of the dataset's.
        "mlflow put artifact": _outcome(
            lambda: mlflow.put_object(Bucket="shopml-mlflow", Key="artifacts/1/model.pt", Body=b"1")
        ),
        "mlflow read dvc": _outcome(lambda: mlflow.get_object(Bucket="shopml-dvc", Key="dataset/a")),
        "airflow read log": _outcome(
            lambda: airflow.get_object(Bucket="shopml-predictions", Key="log/next_item/a.parquet")
        ),
        "airflow prune log": _outcome(
            lambda: airflow.delete_objects(
                Bucket="shopml-predictions", Delete={"Objects": [{"Key": "log/next_item/a.parquet"}]}
            )
        ),
        # The root keys, after minio-init: refused.
        "root list": _outcome(
            lambda: _client(endpoint, aws_access_key_id="root", aws_secret_access_key="root-secret").list_buckets()
        ),
    }
    allowed = {
        "airflow put dvc",
        "airflow multipart dvc",
        "airflow head dvc",
        "airflow list dvc",
        "serve append log",
        "serve find log bucket",
        "mlflow put artifact",
        "airflow read log",
        "airflow prune log",
    }
    assert {k for k, v in seen.items() if v == "allowed"} == allowed, json.dumps(seen, indent=1)
    assert seen["root list"] == "InvalidAccessKeyId", seen


def test_minio_and_moto_load_the_same_policies():
    """minio-init.sh names each policy file, and every statement uses IAM's S3 actions."""
    script = (S3 / "minio-init.sh").read_text()
    for service in ("airflow", "mlflow", "serve"):
        policy = json.loads((S3 / f"{service}.json").read_text())
        assert f"account {service} " in script
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow" and statement["Resource"], statement
            for action in statement["Action"]:
                assert action in {
                    "s3:ListBucket",
                    "s3:GetBucketLocation",
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:DeleteObject",
                }, action
