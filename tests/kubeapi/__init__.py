"""A Kubernetes API server for tests, speaking the real REST and watch protocol.

Start a :class:`KubeApiServer` in the test's event loop, point the official client at it
with :func:`api_client`, and drive the cluster through the server's control API.
"""

from tests.kubeapi.client import api_client
from tests.kubeapi.server import KubeApiServer, ScaleRecord
from tests.kubeapi.status import ApiError

__all__ = ["ApiError", "KubeApiServer", "ScaleRecord", "api_client"]
