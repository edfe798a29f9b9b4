"""The official client, configured for a :class:`~tests.kubeapi.server.KubeApiServer`."""

from __future__ import annotations

from kubernetes import client


def api_client(
    port: int, host: str = "127.0.0.1", *, retries: int | None = None
) -> client.ApiClient:
    """An ``ApiClient`` for ``http://host:port``: no credentials, no proxy (whatever the
    environment says), a connection pool big enough for a watch plus concurrent calls.
    ``retries`` is urllib3's connection retry count (None: urllib3's default of 3).

    The caller owns it: ``close()`` it when done, or its pooled sockets leak.
    """
    config = client.Configuration(
        host=f"http://{host}:{port}",
        no_proxy="*",
        connection_pool_maxsize=8,
        retries=retries,
    )
    return client.ApiClient(config)
