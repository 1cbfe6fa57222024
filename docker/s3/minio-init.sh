#!/bin/sh
# minio-init (the mc image), as MinIO's root, on every start of the stack: the buckets, then one
# account per service, each with its own policy (this folder's JSON files); the root keys stay with
# MinIO and this container. Re-running it updates the policies and secrets to .env's.
#   airflow: the DVC remote (read, write), the prediction log (read; gc deletes)
#   mlflow:  the artifact bucket (the server proxies every client's artifacts)
#   serve:   appends to the prediction log, nothing else
set -eu
mc mb --ignore-existing shopml/shopml-mlflow shopml/shopml-dvc shopml/shopml-predictions
account() {  # SERVICE ACCESS_KEY SECRET_KEY
  mc admin policy create shopml "shopml-$1" "/etc/shopml-s3/$1.json"
  mc admin user add shopml "$2" "$3"
  # attach refuses a policy already attached: then the user's info must name it
  mc admin policy attach shopml "shopml-$1" --user "$2" || mc admin user info shopml "$2" | grep -q "shopml-$1"
}
account airflow "$S3_AIRFLOW_ACCESS_KEY" "$S3_AIRFLOW_SECRET_KEY"
account mlflow "$S3_MLFLOW_ACCESS_KEY" "$S3_MLFLOW_SECRET_KEY"
account serve "$S3_SERVE_ACCESS_KEY" "$S3_SERVE_SECRET_KEY"
echo "buckets and the airflow, mlflow and serve accounts ready"
