"""mmgen: a plugin-based framework for multimodal generative models.

The engine (this package) owns the registries, the configuration, model assembly, the training
loop and the CLI. Every concrete component -- datasets, encoders, decoders, aggregators, priors,
inference methods, objectives, metrics -- is contributed by a plugin through pluggy hooks, the
built-in ones included (package ``mmgen_builtin``).
"""

__version__ = "0.1.0"
