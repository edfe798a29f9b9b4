"""Kubernetes adapters (official ``kubernetes`` client): pods, scale, leader election."""
