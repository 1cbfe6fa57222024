"""minio-init of the Debian-built stack (docker/compose.debian.yaml), where moto's S3 server stands in
for MinIO: the buckets, then one IAM user per service with its policy (this folder's JSON files,
the same MinIO gets), then moto told to check every request's key against those policies.

moto makes its own access keys (MinIO takes .env's): each service's key pair is written as an AWS
credentials file into a volume only that service mounts (``AWS_SHARED_CREDENTIALS_FILE``). After this
script the root keys are refused. moto keeps everything in memory and its ``/moto-api/`` answers
anyone on the network: a stand-in for tests on machines without MinIO's image, not for production.
"""

from __future__ import annotations

import configparser
import json
import os
import sys
import urllib.request
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

ENDPOINT = os.environ.get("AWS_ENDPOINT_URL", "http://minio:9000")
BUCKETS = ("shopml-mlflow", "shopml-dvc", "shopml-predictions")
SERVICES = ("airflow", "mlflow", "serve")
POLICIES = Path(__file__).resolve().parent
KEYS = Path(os.environ.get("SHOPML_S3_KEYS_DIR", "/run/s3-keys"))  # KEYS/<service>/credentials


# moto names the action of some requests after the API call, not after the IAM action S3 and MinIO
# check (moto.s3.responses): a policy's IAM action must also name these for moto to allow the same.
MOTO_ALIASES = {
    "s3:ListBucket": ["s3:ListObjectsV2", "s3:ListObjects", "s3:HeadBucket"],
    "s3:GetObject": ["s3:HeadObject"],
    "s3:PutObject": [
        "s3:CreateMultipartUpload",
        "s3:UploadPart",
        "s3:CompleteMultipartUpload",
        "s3:CopyObject",
        "s3:UploadPartCopy",
    ],
    "s3:DeleteObject": ["s3:DeleteObjects"],
}


def moto_policy(policy: dict) -> dict:
    """``policy`` with moto's names added beside the IAM actions they stand for."""
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        statement["Action"] = actions + [alias for action in actions for alias in MOTO_ALIASES.get(action, [])]
    return policy


def _client(name: str, **keys: str):
    return boto3.client(name, endpoint_url=ENDPOINT, region_name="us-east-1", **keys)


def _already_set_up() -> bool:
    """A second start of the stack: moto still holds the accounts and checks keys."""
    path = KEYS / "airflow" / "credentials"
    if not path.exists():
        return False
    keys = configparser.ConfigParser()
    keys.read(path)
    s3 = _client("s3", **dict(keys["default"]))
    try:
        s3.head_bucket(Bucket="shopml-dvc")
    except ClientError:
        return False
    try:  # the root keys must be refused: else moto restarted and lost its accounts
        _client("s3").head_bucket(Bucket="shopml-dvc")
    except ClientError:
        return True
    return False


def main() -> int:
    if _already_set_up():
        print("the buckets and the airflow, mlflow and serve accounts are already there")
        return 0
    s3, iam = _client("s3"), _client("iam")
    for bucket in BUCKETS:
        try:
            s3.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise
    for service in SERVICES:
        user = f"shopml-{service}"
        try:
            iam.create_user(UserName=user)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "EntityAlreadyExists":
                raise
        for old in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]:
            iam.delete_access_key(UserName=user, AccessKeyId=old["AccessKeyId"])
        policy = moto_policy(json.loads((POLICIES / f"{service}.json").read_text()))
        iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        folder = KEYS / service
        folder.mkdir(parents=True, exist_ok=True)
        credentials = configparser.ConfigParser()  # the AWS credentials file's format
        credentials["default"] = {
            "aws_access_key_id": key["AccessKeyId"],
            "aws_secret_access_key": key["SecretAccessKey"],
        }
        with open(folder / "credentials", "w") as fh:
            credentials.write(fh)
        (folder / "credentials").chmod(0o644)  # read by the service's own user (its volume alone)
    # From now on every request is checked against the users' policies; the root keys get a 403.
    request = urllib.request.Request(  # not form-encoded: moto reads the raw body
        f"{ENDPOINT}/moto-api/reset-auth", data=b"0", method="POST", headers={"content-type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()
    print("buckets and the airflow, mlflow and serve accounts ready; keys checked from now on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
