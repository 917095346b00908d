"""Evaluation metrics (SPEC section 3), registered from ``mmgen_builtin.register_metrics``."""
