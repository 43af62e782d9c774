"""Versions both ends of a connection must agree on."""

from __future__ import annotations

import sys

__version__ = "0.1.0"
# cloudpickled code carries bytecode, which changes between Python minor versions.
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
