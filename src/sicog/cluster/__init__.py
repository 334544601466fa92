"""Training on Kubernetes: a SICOG stage as a Kubeflow PyTorchJob, and the launcher that runs it.

`pytorchjob` builds the job (typed kubeflow-training SDK objects) and, experimentally, the same
stage as a Kubeflow Trainer v2 TrainJob manifest; `launcher` creates the job, follows it to
Succeeded or Failed and deletes it on timeout or cancellation. sicog.train.backends.pytorchjob is
the training backend that uses them (cluster.trainer: pytorchjob); its pods run the entry point every
training process runs, `python -m sicog.train REQUEST_URI`, under torchrun.
"""
