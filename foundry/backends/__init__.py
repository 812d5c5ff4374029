"""Model backends: the interface (base), the registry (the one list of names), retries, and
one package or module per backend. Nobody outside this package compares a backend's name."""
