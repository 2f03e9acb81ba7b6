"""What a receive keeps of a stream's privileges: owners, setuid/setgid bits, special files,
privileged xattrs and ACLs (receiver-guarantees.md, "No privilege by default")."""

from __future__ import annotations

import os
import stat

from rawsend.stream.records import Create, RecordType

# xattr namespaces that grant privileges (file capabilities, security labels, overlayfs
# redirects): set only when owners are kept, like setuid bits
PRIVILEGED_XATTRS = (b"security.", b"trusted.")
CAPABILITY_XATTR = b"security.capability"
# POSIX ACLs grant access to users and groups named by number, as owners are: they are kept
# exactly when owners are (the numbers mean the same users only then)
ACL_XATTRS = b"system.posix_acl_"
DEVICES = (stat.S_IFBLK, stat.S_IFCHR)

# as globals: cheaper per record than the enum's class attributes
_MKDIR = RecordType.MKDIR


class MetadataPolicy:
    """Decides, and counts in ``report`` (a TreeReport), what of each record's metadata is kept."""

    def __init__(self, report, *, preserve_owner: bool | None, preserve_special: bool,
                 preserve_devices: bool):
        self.report = report
        self.root_user = os.geteuid() == 0
        self.preserve_owner = self.root_user if preserve_owner is None else preserve_owner
        self.preserve_special = preserve_special
        self.preserve_devices = preserve_devices

    def mode(self, rec: Create) -> int:
        """The permission bits ``rec`` gets on disk."""
        mode = stat.S_IMODE(rec.mode)
        if self.preserve_owner:
            if mode & 0o6000 and rec.type != _MKDIR:  # on a directory they grant nothing
                self.report.kept_setid += 1
        else:
            keep = 0o3777 if rec.type == _MKDIR else 0o777  # no setuid/setgid on files we own
            if mode & ~keep:
                self.report.stripped_modes += 1
            mode &= keep
        return mode

    def special_allowed(self, rec: Create) -> bool:
        """Whether the special file ``rec`` is created; a skipped one is counted."""
        kind = stat.S_IFMT(rec.mode)
        if kind in DEVICES:
            # a device node opens whatever device its number names (this host's disks too)
            allowed = self.preserve_devices and self.root_user
        else:
            allowed = self.preserve_special and (kind == stat.S_IFIFO or self.root_user)
        if not allowed:
            self.report.skipped_special += 1
            if kind in DEVICES:
                self.report.skipped_devices += 1
        return allowed

    def xattr_refusal(self, name: bytes) -> str | None:
        """Why the xattr ``name`` is not set, or None to set it."""
        if self.preserve_owner:
            return None
        if name.startswith(PRIVILEGED_XATTRS):
            return "security.* and trusted.* need --preserve-owner"
        if name.startswith(ACL_XATTRS):
            return "ACLs name users and groups by number: they need --preserve-owner"
        return None

    def xattr_set(self, name: bytes) -> None:
        if name == CAPABILITY_XATTR:
            self.report.kept_capabilities += 1
