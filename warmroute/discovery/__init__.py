"""Where replicas come from: static config, Kubernetes Pods or an InferencePool, each made
WARM by its warm probe; and what their own metrics say about load warmroute did not lease."""
