"""Object storage (``sky.storage``): the same as ``skyward_trio.storage``.

``with sky.storage.S3(region="us-east-1") as s3: s3.upload("my-bucket", "model.pt")``;
the presets and the client are described there.
"""

from skyward_trio import storage as _storage
from skyward_trio.storage import *  # noqa: F403  (the same names, for `from skyward.storage`)

__all__ = _storage.__all__
