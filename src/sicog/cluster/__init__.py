"""Training on Kubernetes: a SICOG stage as a Kubeflow Trainer v2 TrainJob or a Kubeflow PyTorchJob, run to its end.

`trainjob` builds the TrainJob (trainer.kubeflow.org/v1alpha1, the default) and runs it: create,
follow to Complete or Failed, delete on timeout or cancellation. `pytorchjob` builds the PyTorchJob
(typed kubeflow-training SDK objects, for clusters on the Training Operator v1) and `launcher` runs it
the same way. sicog.train.backends.trainjob / .pytorchjob are the training backends that use them
(cluster.trainer); their pods run the entry point every training process runs, `python -m
sicog.train REQUEST_URI`, under torchrun. `serving` runs a cycle's inference servers; `kube` is the
one Kubernetes client factory.
"""
