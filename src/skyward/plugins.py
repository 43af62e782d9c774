"""Plugins (``sky.plugins``): the same as ``skyward_trio.plugins``.

``from skyward.plugins import Plugin`` builds your own; ``sky.plugins.torch()`` and the
other built-ins are described there.
"""

from skyward_trio.plugins import Cluster, Plugin, joblib, keras, sklearn, torch

__all__ = ["Cluster", "Plugin", "joblib", "keras", "sklearn", "torch"]
