"""Own-Envoy mode's request path: the stream adapters around the director.

``processor`` answers ext_proc on request headers (the decision is
``warmroute.director``'s); ``accesslog`` ends each lease when Envoy's access log reports
the request's end (the lease deadline is the net); ``load_reports`` compares Envoys' own
in-flight counts with the ledger; ``models_api`` answers ``GET /v1/models``.
"""
