"""rawsend: move file trees between hosts as raw encoded extents."""

__version__ = "0.1.0"
