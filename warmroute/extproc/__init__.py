"""The per-request plane of warmroute's own Envoy: lease on request headers (ext_proc),
release when the access log reports the request's end (the lease deadline is the net)."""
