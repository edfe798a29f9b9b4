"""The config plane: Envoy resources built from config + registry, and how they reach Envoy."""
