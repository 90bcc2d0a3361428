"""Distributed execution: Ray suite executor, Ray-sharded gradient engine, DeepSpeed engine.

The harness names none of these modules: they are declared in pyproject.toml's entry-point
groups (``mtlbench.engines``: ``ray_sharded``, ``deepspeed``; ``mtlbench.executors``: ``ray``;
``mtlbench.commands``: ``submit``) and imported by :mod:`mtlbench.harness.registry` on first use.
"""
