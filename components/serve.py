"""Components: the cycle-scoped inference server of one sampling model (served engines on a cluster).

The launch task deploys it and hands its endpoint to the shard tasks; the delete task is the exit
handler of the sampling group, so the server goes even when sampling fails (sicog.cluster.serving
also sweeps what an exit handler that never ran left behind).
"""

from kfp import dsl

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def launch_server(config: dict, run_id: str, role: str, model_uri: str) -> dict:
    """Input: the model's store URI (role: perception, reasoning or backbone). Output: the ready server,
    {"endpoint", "served_model", "name", "namespace", "image_edge"}, for the shard tasks."""
    from sicog.cluster.serving import launch_server as launch
    from sicog.config import validate_config

    cfg = validate_config(config)
    return launch(cfg, run_id=run_id, role=role, model_uri=model_uri, namespace=cfg.cluster.namespace)


@dsl.component(base_image=IMAGE)
def delete_server(config: dict, run_id: str, role: str):
    """The sampling group's exit handler: deletes the run's server of `role` (Deployment + Service);
    nothing there is not an error."""
    from sicog.cluster.serving import delete_servers
    from sicog.config import validate_config

    cfg = validate_config(config)
    print("deleted:", ", ".join(delete_servers(run_id, cfg.cluster.namespace, role=role)) or "nothing")
