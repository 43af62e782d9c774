"""Object storage (``sky.storage``): the same as ``skyward_trio.storage``.

``with sky.storage.S3(region="us-east-1") as s3: s3.upload("my-bucket", "model.pt")``;
the presets and the client are described there.
"""

from skyward_trio.storage import (
    GCS,
    R2,
    S3,
    AsyncStorageClient,
    Backblaze,
    Credential,
    Storage,
    StorageClient,
    StorageError,
    Wasabi,
)

__all__ = [
    "GCS",
    "R2",
    "S3",
    "AsyncStorageClient",
    "Backblaze",
    "Credential",
    "Storage",
    "StorageClient",
    "StorageError",
    "Wasabi",
]
