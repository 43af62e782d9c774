"""Plugins (``sky.plugins``): the same as ``skyward_trio.plugins``.

``from skyward.plugins import Plugin`` builds your own; ``sky.plugins.torch()`` and the
other built-ins are described there.
"""

from skyward_trio.plugins import BUILT_IN, Cluster, Plugin, jax, joblib, keras, sklearn, torch

__all__ = ["BUILT_IN", "Cluster", "Plugin", "jax", "joblib", "keras", "sklearn", "torch"]
