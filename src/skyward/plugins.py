"""Plugins (``sky.plugins``): the same as ``skyward_trio.plugins``.

``from skyward.plugins import Plugin`` builds your own; ``sky.plugins.torch()`` and the
other built-ins are described there.
"""

from skyward_trio import plugins as _plugins
from skyward_trio.plugins import *  # noqa: F403  (the same names, for `from skyward.plugins`)

__all__ = _plugins.__all__
