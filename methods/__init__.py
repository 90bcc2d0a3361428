"""Multi-task methods, one module each, registered by name (see ``harness.registry``)."""
