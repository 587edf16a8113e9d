"""Hard-link clones of a layer's diff dir, the staging area of an atomic ``apply_diff``.

A clone shares every non-directory inode with the original (``link``), and recreates every
directory with the same owner, mode (setuid/setgid/sticky included), xattrs (``trusted.*``
included, e.g. the overlay opaque flag) and times. Because the extractor never modifies an
existing non-directory inode in place (it unlinks and recreates), changes made in the clone
never reach the original, and swapping the clone in with ``rename_exchange`` is atomic.
"""
from __future__ import annotations

import os

__all__ = ["clone_tree", "copy_dir_attributes"]


def copy_dir_attributes(src: str, dst: str) -> None:
    """Give directory ``dst`` the owner, mode, xattrs and times of directory ``src``."""
    st = os.lstat(src)
    for name in os.listxattr(src, follow_symlinks=False):
        os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(dst, st.st_mode & 0o7777)  # after chown, which clears setuid/setgid
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def clone_tree(src: str, dst: str, *, empty: bool = False) -> None:
    """Create ``dst`` (must not exist; same filesystem as ``src``) as a hard-link clone of ``src``.

    With ``empty`` only the root directory's attributes are copied. On error ``dst`` may be
    partly built; the caller removes it.
    """
    os.mkdir(dst, 0o700)
    dirs: list[tuple[str, str]] = [(src, dst)]
    if not empty:
        index = 0
        while index < len(dirs):
            src_dir, dst_dir = dirs[index]
            index += 1
            with os.scandir(src_dir) as it:
                for entry in it:
                    s = os.path.join(src_dir, entry.name)
                    d = os.path.join(dst_dir, entry.name)
                    if entry.is_dir(follow_symlinks=False):
                        os.mkdir(d, 0o700)
                        dirs.append((s, d))
                    else:
                        os.link(s, d, follow_symlinks=False)
    # children before parents: filling a directory changes its mtime
    for src_dir, dst_dir in reversed(dirs):
        copy_dir_attributes(src_dir, dst_dir)
