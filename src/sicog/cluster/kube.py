"""The one way sicog reaches the Kubernetes API.

Which credentials, in this order: $KUBECONFIG's current context when KUBECONFIG is set; else the
in-cluster service account when running in a pod ($KUBERNETES_SERVICE_HOST); else ~/.kube/config.
KUBECONFIG is read at call time, not when the kubernetes package is imported (the client library
reads it only once, at import), so tests and `sicog` commands can point it elsewhere per call.
No credentials at all: a UserError, "no access to a Kubernetes cluster: ...".

    from sicog.cluster import kube

    api = kube.connect()                       # KubeClients, typed, on one authenticated ApiClient
    api.apps.read_namespaced_deployment(...)   # kubernetes.client.AppsV1Api
    api.core.list_namespaced_pod(...)          # kubernetes.client.CoreV1Api
    api.custom.get_namespaced_custom_object(...)  # kubernetes.client.CustomObjectsApi

    # An SDK that builds its own clients gets the same credentials through the Configuration, e.g. the
    # kubeflow-training SDK in sicog.cluster.launcher.training_client:
    TrainingClient(client_configuration=kube.configuration(), namespace=namespace)

Nothing is cached: each call reads the credentials afresh (a service-account token is rotated).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sicog.errors import UserError

if TYPE_CHECKING:
    from kubernetes.client import AppsV1Api, Configuration, CoreV1Api, CustomObjectsApi


def configuration() -> Configuration:
    """A kubernetes.client.Configuration holding this process's credentials (see the module
    docstring for the order); UserError when there are none."""
    from kubernetes import client, config
    from kubernetes.config import ConfigException

    conf = client.Configuration()
    path = os.environ.get("KUBECONFIG")
    try:
        if not path and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=conf)
        else:
            config.load_kube_config(config_file=path or None, client_configuration=conf)
    except (ConfigException, OSError) as exc:
        raise UserError(f"no access to a Kubernetes cluster: {' '.join(str(exc).split())}") from None
    return conf


@dataclass(frozen=True)
class KubeClients:
    """The typed API groups sicog uses, sharing one authenticated ApiClient (one connection pool)."""

    apps: AppsV1Api
    core: CoreV1Api
    custom: CustomObjectsApi

    @classmethod
    def connect(cls) -> KubeClients:
        """The same as `sicog.cluster.kube.connect()`."""
        return connect()


def connect() -> KubeClients:
    """KubeClients(apps=AppsV1Api, core=CoreV1Api, custom=CustomObjectsApi) on this process's
    credentials; UserError when there are none."""
    from kubernetes import client

    api = client.ApiClient(configuration())
    return KubeClients(client.AppsV1Api(api), client.CoreV1Api(api), client.CustomObjectsApi(api))
