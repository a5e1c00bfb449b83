"""The genfarm domain: job kinds, manifests, the database record and the job state machine."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("genfarm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
