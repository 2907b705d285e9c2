"""Process plumbing: composition, listeners, TLS, workers, metrics, logs, status page,
management."""
