"""mtlbench's harness: suite config, registries, budget, gradient engines, trainer, records."""
