"""Training on Kubernetes: a SICOG stage as a Kubeflow PyTorchJob, and the launcher that runs it.

`pytorchjob` builds the job (typed kubeflow-training SDK objects) and, experimentally, the same
stage as a Kubeflow Trainer v2 TrainJob manifest; `launcher` creates the job, follows it to
Succeeded or Failed and deletes it on timeout or cancellation. `sicog.steps.train_pytorchjob` is
the step the pipeline's train component calls with `cluster.trainer: pytorchjob`; locally the same
component runs torchrun (sicog.train.launch), with the same `sicog train` entry point.
"""
