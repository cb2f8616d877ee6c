"""Pure builders: typed API objects in, Kubernetes manifests (dicts) out. No I/O."""
