"""Training as a Kubernetes pod on a GPU node (listed in .airflowignore: not a DAG file itself).

Used when ``SHOPML_TRAIN_RUNNER=kubernetes_pod``: the ``train_<model>`` task becomes a
``KubernetesPodOperator`` that runs the training image (``docker/train.Dockerfile``) with
``python -m pipeline train``, asking for ``nvidia.com/gpu`` and scheduled on GPU nodes. The pod
needs two things the other tasks also use:

- the state folder (the feature sets the ``features_<model>`` task wrote): a ReadWriteMany
  PersistentVolumeClaim (``SHOPML_STATE_PVC``) mounted at ``SHOPML_POD_HOME``, which must be the
  same folder the Airflow workers see as ``$SHOPML_HOME``;
- the MLflow tracking server: ``MLFLOW_TRACKING_URI`` is passed through.

The pod writes its outcome to ``/airflow/xcom/return.json``, which the operator reads back as the
task's XCom, the same dict the in-worker training task returns. A retried pod first looks for the
finished run tagged with this DAG run (``--reuse-finished``) and never trains a second model.

Settings (environment variables of the DAG processor, read at parse time):

| variable | default | what it sets |
|---|---|---|
| `SHOPML_TRAIN_IMAGE` | `shopml-train:0.1.0` | the training image |
| `SHOPML_K8S_NAMESPACE` | `shopml` | the namespace of the pods |
| `SHOPML_TRAIN_GPUS` | `1` | `nvidia.com/gpu` requested and limited |
| `SHOPML_STATE_PVC` | `shopml-state` | the claim holding the state folder |
| `SHOPML_POD_HOME` | `/shopml/state` | where the claim is mounted in the pod |
| `SHOPML_GPU_NODE_SELECTOR` | `nvidia.com/gpu.present=true` | `key=value` label of the GPU nodes |
| `SHOPML_K8S_CONN_ID` | `kubernetes_default` | the Airflow connection to the cluster |
"""

from __future__ import annotations

import os


def pod_settings(env=os.environ) -> dict:
    selector_key, _, selector_value = env.get("SHOPML_GPU_NODE_SELECTOR", "nvidia.com/gpu.present=true").partition("=")
    return {
        "image": env.get("SHOPML_TRAIN_IMAGE", "shopml-train:0.1.0"),
        "namespace": env.get("SHOPML_K8S_NAMESPACE", "shopml"),
        "gpus": int(env.get("SHOPML_TRAIN_GPUS", "1")),
        "pvc": env.get("SHOPML_STATE_PVC", "shopml-state"),
        "pod_home": env.get("SHOPML_POD_HOME", "/shopml/state"),
        "node_selector": {selector_key: selector_value},
        "conn_id": env.get("SHOPML_K8S_CONN_ID", "kubernetes_default"),
    }


def training_pod(model: str, features, *, pool: str, execution_timeout, env=os.environ):
    """The ``train_<model>`` task as a pod; ``features`` is the features task's XComArg."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    s = pod_settings(env)
    gpu = {"nvidia.com/gpu": str(s["gpus"])} if s["gpus"] > 0 else {}
    pass_through = [
        k8s.V1EnvVar(name=name, value=env[name])
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "SHOPML_PARAMS")
        if env.get(name)
    ]
    task_id = f"train_{model}"
    op = KubernetesPodOperator(
        task_id=task_id,
        name=f"shopml-{task_id.replace('_', '-')}",
        namespace=s["namespace"],
        kubernetes_conn_id=s["conn_id"],
        image=s["image"],
        # One process per GPU under torchrun (DDP); rank 0 alone tracks the run and writes the XCom.
        cmds=["torchrun", "--standalone", f"--nproc-per-node={s['gpus']}", "-m", "pipeline"]
        if s["gpus"] > 1
        else ["python", "-m", "pipeline"],
        arguments=[
            "train",
            "--model",
            model,
            "--features",
            s["pod_home"] + "/{{ ti.xcom_pull(task_ids='features_" + model + "')['features_rel'] }}",
            "--tag",
            "airflow.dag_run_id={{ run_id }}",
            "--tag",
            f"airflow.dag_id=retrain_{model}",
            "--reuse-finished",
            "--output",
            "/airflow/xcom/return.json",
        ],
        env_vars=[k8s.V1EnvVar(name="SHOPML_HOME", value=s["pod_home"]), *pass_through],
        container_resources=k8s.V1ResourceRequirements(requests=gpu or None, limits=gpu or None),
        node_selector=s["node_selector"] if gpu else None,
        tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")] if gpu else None,
        volumes=[
            k8s.V1Volume(
                name="state", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=s["pvc"])
            )
        ],
        volume_mounts=[k8s.V1VolumeMount(name="state", mount_path=s["pod_home"])],
        do_xcom_push=True,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        pool=pool,
        execution_timeout=execution_timeout,
    )
    features >> op
    return op
