"""Everything FUSE and trio: the mount daemon and the requests it answers."""

# The namespace of the extended attributes artfs answers (stats, digests, types).
XATTR_PREFIX = "user.artfs."
