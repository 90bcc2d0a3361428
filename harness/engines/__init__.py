"""The local gradient engines (``loop``, ``batched``, ``representation``) and what they share.

Modules: :mod:`~mtlbench.harness.engines.state` (the step's state, gradient bookkeeping),
:mod:`~mtlbench.harness.engines.base` (``GradientEngine``, the reference ``loop`` engine),
:mod:`~mtlbench.harness.engines.batched` (batched vector-Jacobian products). Import them through
:mod:`mtlbench.harness.gradients`, which also finds engines by name.
"""
