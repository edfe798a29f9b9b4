"""Request-time autoscaling: queued demand asks for replicas at once; idle pools shrink."""
