"""Multi-task datasets, one module each, registered by name (see ``harness.registry``)."""
