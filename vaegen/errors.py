"""The one error hierarchy. The CLI turns these into a one-line message and an exit code."""


class VaegenError(Exception):
    """Bad input or an unusable artifact: the CLI prints one line and exits with code 2."""

    exit_code: int = 2


class InternalFailure(VaegenError):
    """A check of our own output failed (e.g. ONNX parity): exit code 1, nothing left behind."""

    exit_code = 1


class ClusterUnavailable(VaegenError):
    """The Ray cluster lost what a running job needs (no worker can be placed): exit code 1."""

    exit_code = 1


class MissingDependency(VaegenError):
    """An optional heavy dependency is not installed; the message carries the install hint."""
