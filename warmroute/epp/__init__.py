"""Endpoint picker mode: warmroute as the EPP of a gateway-owned Envoy.

The Gateway API Inference Extension's "endpoint picker protocol" (proposal 004): the gateway
calls the picker over ext_proc for every request, with bodies streamed full duplex, and
routes by the ``x-gateway-destination-endpoint`` the picker returns. Modules:

* ``protocol``: the ext_proc stream (buffer and echo the body; the director leases and,
  at the end, releases);
* ``messages``: the protocol's messages (subset hint, routed answer, body chunks);
* ``health``: gRPC health as gateways and Kubernetes probe it;
* ``tls``: the port's certificate (self-signed at start unless configured);
* ``service``: the three wired together, the mode's ``FrontEnd`` for ``ControlPlane``.
"""

from warmroute.epp.protocol import EndpointPicker, PickerSettings
from warmroute.epp.service import PickerService

__all__ = ["EndpointPicker", "PickerService", "PickerSettings"]
