"""Hard-link clones of a layer's diff dir (the staging area of an atomic ``apply_diff``), and
the deletion of whole trees.

A clone shares every non-directory inode with the original (``link``), and recreates every
directory with the same owner, mode (setuid/setgid/sticky included), xattrs (``trusted.*``
included, e.g. the overlay opaque flag) and times. Because the extractor never modifies an
existing non-directory inode in place (it unlinks and recreates), changes made in the clone
never reach the original, and swapping the clone in with ``rename_exchange`` is atomic.

Both walks hold two directory fds at a time and climb back through ``..``, with a stack of
names: a hostile layer may be deeper than Python's recursion limit (``shutil.rmtree``
recurses up to Python 3.11) and its paths, once below the store's own directories, longer
than PATH_MAX, so neither recursion nor absolute paths are used.
"""
from __future__ import annotations

import errno
import os

__all__ = ["clone_tree", "copy_dir_attributes", "remove_tree"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

def copy_dir_attributes(src: str | int, dst: str | int) -> None:
    """Give directory ``dst`` the owner, mode, xattrs and times of directory ``src`` (paths or fds)."""
    # a path is never followed if it is a symlink; an fd names its directory already
    src_link = not isinstance(src, int)
    dst_link = not isinstance(dst, int)
    st = os.stat(src, follow_symlinks=not src_link)
    for name in os.listxattr(src, follow_symlinks=not src_link):
        value = os.getxattr(src, name, follow_symlinks=not src_link)
        os.setxattr(dst, name, value, follow_symlinks=not dst_link)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=not dst_link)
    os.chmod(dst, st.st_mode & 0o7777)  # after chown, which clears setuid/setgid
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=not dst_link)


def _fill(src_fd: int, dst_fd: int) -> list[str]:
    """Link every non-directory of ``src_fd`` into ``dst_fd``, create its subdirectories there
    (mode 0700 until their attributes are copied); returns the subdirectories' names."""
    subdirs = []
    with os.scandir(src_fd) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                os.mkdir(entry.name, 0o700, dir_fd=dst_fd)
                subdirs.append(entry.name)
            else:
                os.link(entry.name, entry.name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
    return subdirs


def clone_tree(src: str, dst: str, *, empty: bool = False) -> None:
    """Create ``dst`` (must not exist; same filesystem as ``src``) as a hard-link clone of ``src``.

    With ``empty`` only the root directory's attributes are copied. On error ``dst`` may be
    partly built; the caller removes it.
    """
    os.mkdir(dst, 0o700)
    src_fd = os.open(src, _DIR_FLAGS)
    dst_fd = -1
    try:
        dst_fd = os.open(dst, _DIR_FLAGS)
        if empty:
            copy_dir_attributes(src_fd, dst_fd)
            return
        # depth first; each directory's attributes are copied when it is left, after its
        # children (filling a directory changes its mtime)
        stack: list[tuple[str, list[str]]] = []  # (name in the parent, the parent's subdirs left)
        pending = _fill(src_fd, dst_fd)
        while True:
            if pending:
                name = pending.pop()
                below_src = os.open(name, _DIR_FLAGS, dir_fd=src_fd)
                try:
                    below_dst = os.open(name, _DIR_FLAGS, dir_fd=dst_fd)
                except BaseException:
                    os.close(below_src)
                    raise
                stack.append((name, pending))
                os.close(src_fd)
                os.close(dst_fd)
                src_fd, dst_fd = below_src, below_dst
                pending = _fill(src_fd, dst_fd)
                continue
            copy_dir_attributes(src_fd, dst_fd)
            if not stack:
                return
            _, pending = stack.pop()
            up_src = os.open("..", _DIR_FLAGS, dir_fd=src_fd)
            os.close(src_fd)
            src_fd = up_src
            up_dst = os.open("..", _DIR_FLAGS, dir_fd=dst_fd)
            os.close(dst_fd)
            dst_fd = up_dst
    finally:
        os.close(src_fd)
        if dst_fd >= 0:
            os.close(dst_fd)


def _empty_files(fd: int) -> list[str]:
    """Unlink every non-directory in the directory ``fd``; the names of its subdirectories."""
    subdirs = []
    with os.scandir(fd) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                try:
                    os.unlink(entry.name, dir_fd=fd)
                except FileNotFoundError:
                    pass
    return subdirs


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Delete ``path`` and everything below it, however deep (already gone is fine).

    Symlinks are removed, never followed. Nothing below ``path`` may be a mount point.
    """
    parent, name = os.path.split(os.path.abspath(os.fspath(path)))
    parent_fd = os.open(parent, _DIR_FLAGS)
    fd = -1
    try:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            try:
                os.unlink(name, dir_fd=parent_fd)  # a file or a symlink
            except FileNotFoundError:
                pass
            return
        stack: list[tuple[str, list[str]]] = []  # (name in its parent, the parent's subdirs left)
        pending = _empty_files(fd)
        while pending or stack:
            if pending:
                sub = pending.pop()
                try:
                    below = os.open(sub, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue
                stack.append((sub, pending))
                os.close(fd)
                fd, pending = below, _empty_files(below)
                continue
            sub, pending = stack.pop()
            up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            os.rmdir(sub, dir_fd=fd)
        os.close(fd)
        fd = -1
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
    finally:
        if fd >= 0:
            os.close(fd)
        os.close(parent_fd)
