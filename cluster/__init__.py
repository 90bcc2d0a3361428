"""Distributed execution: Ray suite executor, Ray-sharded gradient engine, DeepSpeed engine."""
