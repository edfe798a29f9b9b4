"""Where replicas come from: static config with warm probes (Kubernetes comes later)."""
