"""The error a user can fix: bad input, a bad config, a missing file. The CLI prints it as one line and
exits with status 2; every other exception is a bug and keeps its traceback.

`UserError` is deliberately not a ValueError: a ValueError is a programming error (or a per-record
signal such as sicog.prompts.FormatError, caught where it is raised), and a handler written for one
must not swallow the other. Its subclasses: sicog.config.ConfigError, sicog.store.StoreError,
sicog.scorer.client.ScorerError, sicog.cluster.kube's "no access to a Kubernetes cluster".
"""


class UserError(Exception):
    """A problem in what the user gave us, said in one line that names the fix."""
