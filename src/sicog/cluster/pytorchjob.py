"""One SICOG training stage as a Kubeflow PyTorchJob (`kubeflow.org/v1`): sicog.train.backends' cluster backend for
clusters still on the Training Operator v1 (cluster.trainer pytorchjob; Kubeflow Trainer v2's TrainJob, the default,
is sicog.cluster.trainjob, which shares this module's pod pieces: env, resources, volumes, labels, name, command).

Locally a stage runs `torchrun --standalone --nproc_per_node N -m sicog.train REQUEST`; on a cluster
its pods run the same entry point, `torchrun -m sicog.train REQUEST_URI`: one Master and
`cluster.nodes - 1` Workers of `train.nproc` ranks each (paper scale: 4 x 8 A100). torchrun reads the
node count, ranks per node, node rank and master address from the PET_* variables the Training
Operator sets in every pod, so the command names no topology. The pods share no files with the
pipeline: the request (sicog.train.request.TrainRequest: config, inputs, output) is read from the
store, S3 credentials come from an existing Secret, and only global rank 0 publishes the output, once,
at the request's `out` (see sicog.train.run.rank_output).

The job is made of the kubeflow-training SDK's typed models (whose pod template is the kubernetes
client's V1PodTemplateSpec), so a misspelt field fails here rather than on the cluster; tests
validate it against the operator's CRD schema too.
"""

from __future__ import annotations

import hashlib
import math
import os
import re

from kubeflow.training import models
from kubernetes import client as k8s

from sicog.config import SicogConfig
from sicog.logs import RUN_ID_ENV
from sicog.store import SECRET_ENV

CONTAINER = "pytorch"  # the Training Operator finds the training container of a PyTorchJob by this name
PORT_NAME, PORT = "pytorchjob-port", 23456  # the operator's default master port (it sets MASTER_PORT / PET_MASTER_PORT from it)
USER = 10001  # numeric non-root user of the trainer image (images/trainer/Dockerfile)
FINISHED_TTL_S = 86400  # a finished job (and its pods' logs) stays a day for inspection, then the operator removes it


def _slug(text: str, limit: int) -> str:
    """Lower-case letters, digits and dashes, at most `limit` long, starting and ending alphanumeric."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower())[:limit].strip("-") or "x"


def job_name(name: str, out: str) -> str:
    """`sicog-<stage name>-<8 hex of sha256(out)>`: a DNS-1035 label, unique per output (so per run), and
    stable across retries of one task, which then find the job an earlier attempt created. At most 44
    characters: the operator names Services `<job>-worker-<i>`, which must stay within 63."""
    return f"sicog-{_slug(name, 29)}-{hashlib.sha256(out.encode()).hexdigest()[:8]}"


def train_command(request_uri: str) -> list[str]:
    """The pods' command: `torchrun -m sicog.train REQUEST_URI` (topology from the PET_* variables)."""
    return ["torchrun", "-m", "sicog.train", request_uri]


def _env(cfg: SicogConfig) -> list[k8s.V1EnvVar]:
    env = [k8s.V1EnvVar(name="HF_HUB_OFFLINE", value="1"), k8s.V1EnvVar(name="TOKENIZERS_PARALLELISM", value="false")]
    if cfg.cluster.s3_endpoint:
        env.append(k8s.V1EnvVar(name="SICOG_S3_ENDPOINT", value=cfg.cluster.s3_endpoint))
    if cfg.cluster.s3_secret:
        env += [
            k8s.V1EnvVar(name=key, value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=cfg.cluster.s3_secret, key=key)))
            for key in SECRET_ENV
        ]
    if os.environ.get(RUN_ID_ENV):  # the launching task's KFP run id: the job's log lines carry it too (sicog.logs)
        env.append(k8s.V1EnvVar(name=RUN_ID_ENV, value=os.environ[RUN_ID_ENV]))
    return env


def _service_account(cfg: SicogConfig) -> str | None:
    """No S3 Secret: the pods run as cluster.service_account, whose role (IRSA, EKS Pod Identity) the
    store's credential chain finds; with a Secret, the namespace's default account."""
    return None if cfg.cluster.s3_secret else (cfg.cluster.service_account or None)


def _resources(cfg: SicogConfig) -> k8s.V1ResourceRequirements:
    """CPU and memory requests; with an accelerator, train.nproc of them per pod (requests = limits, as
    extended resources require)."""
    requests, limits = {"cpu": cfg.cluster.cpu, "memory": cfg.cluster.memory}, {}
    if cfg.cluster.accelerator:
        requests[cfg.cluster.accelerator] = limits[cfg.cluster.accelerator] = str(cfg.train.nproc)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits or None)


def _volumes(cfg: SicogConfig) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """/dev/shm in memory (NCCL and data loader workers outgrow the runtime's 64 MiB), and a writable
    /tmp: the staging folder of inputs and output (and the checkpoints a restarted container resumes from)."""
    volumes = [
        k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=cfg.cluster.shm_size)),
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource()),
    ]
    mounts = [k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"), k8s.V1VolumeMount(name="tmp", mount_path="/tmp")]
    return volumes, mounts


def _tolerations(cfg: SicogConfig) -> list[k8s.V1Toleration] | None:
    return [k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value or None, effect=t.effect or None) for t in cfg.cluster.tolerations] or None


def _labels(stage: str, name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "sicog", "app.kubernetes.io/component": "trainer", "sicog.io/stage": stage, "sicog.io/name": _slug(name, 63)}


def build_pytorchjob(cfg: SicogConfig, *, stage: str, name: str, out: str, request_uri: str) -> models.KubeflowOrgV1PyTorchJob:
    """The PyTorchJob whose pods run the training request at `request_uri` (stage `stage`, run name
    `name`, output `out`: the job's labels and name)."""
    command = train_command(request_uri)
    volumes, mounts = _volumes(cfg)
    labels = _labels(stage, name)
    container = k8s.V1Container(
        name=CONTAINER,
        image=cfg.cluster.trainer_image,
        command=command,
        env=_env(cfg),
        ports=[k8s.V1ContainerPort(name=PORT_NAME, container_port=PORT)],
        resources=_resources(cfg),
        volume_mounts=mounts,
        security_context=k8s.V1SecurityContext(allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])),
    )
    template = k8s.V1PodTemplateSpec(
        # No Istio sidecar: it would hold the pod Running after training exits, so the job never finishes.
        metadata=k8s.V1ObjectMeta(labels=labels, annotations={"sidecar.istio.io/inject": "false"}),
        spec=k8s.V1PodSpec(
            containers=[container],
            volumes=volumes,
            node_selector=dict(cfg.cluster.node_selector) or None,
            tolerations=_tolerations(cfg),
            automount_service_account_token=False,  # training needs the store, not the Kubernetes API
            service_account_name=_service_account(cfg),
            security_context=k8s.V1PodSecurityContext(
                run_as_non_root=True, run_as_user=USER, run_as_group=USER, fs_group=USER, seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")
            ),
        ),
    )
    replicas = {"Master": models.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="OnFailure", template=template)}
    if cfg.cluster.nodes > 1:
        replicas["Worker"] = models.KubeflowOrgV1ReplicaSpec(replicas=cfg.cluster.nodes - 1, restart_policy="OnFailure", template=template)
    return models.KubeflowOrgV1PyTorchJob(
        api_version="kubeflow.org/v1",
        kind="PyTorchJob",
        metadata=k8s.V1ObjectMeta(name=job_name(name, out), namespace=cfg.cluster.namespace or None, labels=labels),
        spec=models.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(cfg.train.nproc),
            pytorch_replica_specs=replicas,
            run_policy=models.KubeflowOrgV1RunPolicy(
                clean_pod_policy="Running",  # finished pods stay (their logs explain a failure) until the job goes
                backoff_limit=cfg.cluster.retries,  # container restarts before the job is Failed; each resumes from its checkpoint
                active_deadline_seconds=math.ceil(cfg.cluster.job_timeout_s),  # the operator enforces the launcher's limit too
                ttl_seconds_after_finished=FINISHED_TTL_S,
            ),
        ),
    )


def manifest(job) -> dict:
    """A typed job (or any kubernetes / kubeflow model) as the plain dict kubectl and the API take."""
    return k8s.ApiClient().sanitize_for_serialization(job)


def world_size(job: models.KubeflowOrgV1PyTorchJob) -> int:
    """Ranks of the job: pods x nprocPerNode."""
    return int(job.spec.nproc_per_node) * sum(spec.replicas for spec in job.spec.pytorch_replica_specs.values())
