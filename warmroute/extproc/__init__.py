"""The per-request plane: lease on request headers (ext_proc), release on the access log."""
