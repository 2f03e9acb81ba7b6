"""btrfs encoded I/O for rawsend, one job per module:

- ioctl:   the ctypes layer (libc ioctl and statfs, ioctl numbers, the
           encoded I/O argument struct);
- encoded: BTRFS_IOC_ENCODED_READ / ENCODED_WRITE;
- rules:   the kernel's rules for encoded extents, pure, with typed refusals;
- inode:   FIEMAP, inode flags, is_btrfs / sector_size, CAP_SYS_ADMIN.

`from rawsend import btrfs` gives the names callers use from all four.
"""

from rawsend.btrfs.encoded import (
    ENCODED_READ_MAX_BUFFER,
    EncodedExtent,
    encoded_read,
    encoded_write,
)
from rawsend.btrfs.inode import (
    BTRFS_SUPER_MAGIC,
    CAP_SYS_ADMIN,
    FIEMAP_EXTENT_DATA_ENCRYPTED,
    FIEMAP_EXTENT_DATA_INLINE,
    FIEMAP_EXTENT_DATA_TAIL,
    FIEMAP_EXTENT_DELALLOC,
    FIEMAP_EXTENT_ENCODED,
    FIEMAP_EXTENT_LAST,
    FIEMAP_EXTENT_MERGED,
    FIEMAP_EXTENT_NOT_ALIGNED,
    FIEMAP_EXTENT_SHARED,
    FIEMAP_EXTENT_UNKNOWN,
    FIEMAP_EXTENT_UNWRITTEN,
    FIEMAP_FLAG_CACHE,
    FIEMAP_FLAG_SYNC,
    FIEMAP_FLAG_XATTR,
    FS_COMPR_FL,
    FS_IOC_FIEMAP,
    FS_IOC_GETFLAGS,
    FS_NOCOMP_FL,
    FS_NOCOW_FL,
    FiemapExtent,
    fiemap,
    has_cap_sys_admin,
    inode_flags,
    is_btrfs,
    is_nodatasum,
    sector_size,
)
from rawsend.btrfs.ioctl import (
    BTRFS_IOC_ENCODED_READ,
    BTRFS_IOC_ENCODED_WRITE,
    EncodedIoArgs,
    Iovec,
    Statfs,
    statfs,
)
from rawsend.btrfs.rules import (
    COMPRESSION_LZO_4K,
    COMPRESSION_LZO_8K,
    COMPRESSION_LZO_16K,
    COMPRESSION_LZO_32K,
    COMPRESSION_LZO_64K,
    COMPRESSION_NAMES,
    COMPRESSION_NONE,
    COMPRESSION_TYPES,
    COMPRESSION_ZLIB,
    COMPRESSION_ZSTD,
    ENCRYPTION_NONE,
    KERNEL_REFUSALS,
    MAX_ENCODED,
    MAX_UNENCODED,
    NO_CAP,
    NO_RAW,
    NOT_BTRFS,
    Refusal,
    RefusalKind,
    count_by_kind,
    encoded_write_refusal,
    lzo_compression_for_sector_size,
    lzo_sector_size,
    may_be_inline,
    readback_refusal,
    refusal,
)
