"""The names Envoy and warmroute's services agree on in a request's metadata.

The xDS resources write them into Envoy's config; ext_proc and the endpoint picker read
and write them on the request path. Both import them from here, so neither depends on
the other (see tests/unit/test_layering.py).
"""

from __future__ import annotations

# Where override_host reads the chosen endpoint: the Gateway API Inference Extension's key.
LB_NAMESPACE = "envoy.lb"
DESTINATION_KEY = "x-gateway-destination-endpoint"
# Our own dynamic-metadata namespace: lease id and pool. Clients can never write it.
METADATA_NAMESPACE = "warmroute"
# What Envoy's json_to_metadata filter read from the request body, forwarded to ext_proc:
# ``model`` and ``stream`` when present, ``body`` = "no_model" / "invalid" otherwise.
BODY_NAMESPACE = "warmroute.body"
# gRPC initial metadata a route attaches to its ext_proc stream: the pool Envoy routed to.
POOL_METADATA_KEY = "x-warmroute-pool"
