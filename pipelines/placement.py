"""Where and how each pipeline task runs on Kubernetes, from the config's `cluster` section.

Fixed when the pipeline is compiled (KFP writes these into the IR; they are not run-time parameters).
A local run (kfp.local) compiles nothing and gets `cluster=None`: only the caching choice applies.
"""

from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask

from sicog.config import ClusterConfig
from sicog.logs import RUN_ID_ENV
from sicog.store import SECRET_ENV

# The Helm chart's NetworkPolicies let only pods with this label reach the scorer and the sampler.
CLIENT_LABEL = ("sicog.io/client", "true")
# KFP's API server labels every pod of a run with the run's id; sicog.logs puts it on every log line.
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"


def place(task: PipelineTask, cluster: ClusterConfig | None, *, cache: bool, gpus: int = 0, transient: bool = False) -> PipelineTask:
    """cache: the step is a pure function of its inputs (KFP may reuse an earlier result); steps that
    read the store's current state or publish the run's results are never cached.
    gpus: accelerators the step needs (0: a CPU pod). transient: the step may fail for reasons that a
    retry fixes (remote servers, node loss; training resumes from its last checkpoint)."""
    task.set_caching_options(cache)
    if cluster is None:
        return task
    kubernetes.add_pod_label(task, *CLIENT_LABEL)
    kubernetes.use_field_path_as_env(task, env_name=RUN_ID_ENV, field_path=RUN_ID_FIELD)
    if cluster.s3_secret:
        kubernetes.use_secret_as_env(task, secret_name=cluster.s3_secret, secret_key_to_env={k: k for k in SECRET_ENV})
    if cluster.s3_endpoint:
        task.set_env_variable("SICOG_S3_ENDPOINT", cluster.s3_endpoint)
    if transient and cluster.retries:
        # kfp 2.17 has no retry policy: Argo's default OnFailure retries a failed container, not a pod
        # lost with its node (README, "Deploying on Kubernetes": the gap and its backstops).
        task.set_retry(num_retries=cluster.retries, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="3600s")
    if gpus and cluster.accelerator:
        # GPU tasks run in the CUDA image (same sicog, same pins); the default image has CPU-only torch.
        task.set_container_image(cluster.trainer_image)
        task.set_accelerator_type(cluster.accelerator).set_accelerator_limit(gpus)
        for key, value in cluster.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for toleration in cluster.tolerations:
            kubernetes.add_toleration(task, key=toleration.key, operator=toleration.operator, value=toleration.value or None, effect=toleration.effect or None)
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=cluster.shm_size)
    return task
