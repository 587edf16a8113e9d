/* aufs_native.h: shared header of the aufs C core.
 *
 * Conventions (all files): functions return 0 or a non-negative result on success and
 * -errno on failure; buffers are owned by the caller; no static or global mutable state
 * (cffi releases the GIL, so everything must be reentrant); no Python.h.
 *
 * The newer syscalls (statx, renameat2, openat2, the fsopen family) are called through
 * syscall(2) with our own constants and structs, so the module builds against old glibc
 * and kernel headers (manylinux) and still uses what the running kernel offers.
 */
#ifndef AUFS_NATIVE_H
#define AUFS_NATIVE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* glibc 2.33 turned fstat, fstatat and mknodat into versioned symbols of their own; calling
 * the system calls directly keeps the extension loadable on glibc 2.28 (manylinux_2_28)
 * without changing a line of the callers. The kernel's struct stat is glibc's on the 64-bit
 * architectures we build for (x86_64, aarch64). */
static inline int aufs_compat_fstatat(int dir_fd, const char *path, struct stat *st, int flags)
{
    return (int)syscall(SYS_newfstatat, dir_fd, path, st, flags);
}
static inline int aufs_compat_fstat(int fd, struct stat *st)
{
    return (int)syscall(SYS_newfstatat, fd, "", st, AT_EMPTY_PATH);
}
static inline int aufs_compat_mknodat(int dir_fd, const char *path, mode_t mode, dev_t dev)
{
    return (int)syscall(SYS_mknodat, dir_fd, path, mode, dev);
}
#define fstatat aufs_compat_fstatat
#define fstat aufs_compat_fstat
#define mknodat aufs_compat_mknodat

/* aufs_api.h: every constant, struct and prototype the Python side sees (cffi's cdef) */
#include "aufs_api.h"

/* ---- only for the C ---- */

/* The reserved names (aufs.whiteouts spells them for Python; aufs_name() hands these over
 * and aufs._fastpaths checks at import that both agree). */
#define AUFS_WHITEOUT_PREFIX ".wh."
#define AUFS_WHITEOUT_PREFIX_LEN 4
#define AUFS_META_PREFIX AUFS_WHITEOUT_PREFIX ".wh."
#define AUFS_META_PREFIX_LEN 8
#define AUFS_OPAQUE_NAME AUFS_META_PREFIX ".opq"
/* the union filesystem's own xattrs: never exported, never accepted from an archive */
#define AUFS_XATTR_TRUSTED_OVERLAY "trusted.overlay."
#define AUFS_XATTR_USER_OVERLAY "user.overlay."
#define AUFS_XATTR_FUSE_OVERLAY "user.fuseoverlayfs."
#define AUFS_XATTR_OPAQUE_SUFFIX "opaque" /* after one of the three: an opaque directory */

static inline int aufs_has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* An xattr that describes a layer's role in a union mount (aufs.whiteouts.is_private_xattr). */
/* Rootless stores (aufs.rootless): what an unprivileged extraction could not make for real.
 * The override xattr is containers/storage's and fuse-overlayfs's (xattr_permissions=2), as
 * "UID:GID:0MODE:TYPE" with TYPE file, dir, pipe, socket, char-MAJ-MIN or block-MAJ-MIN;
 * xattrs outside user.* are kept under AUFS_ROOTLESS_XATTR_PREFIX + their name. */
#define AUFS_ROOTLESS_OVERRIDE "user.containers.override_stat"
#define AUFS_ROOTLESS_XATTR_PREFIX "user.aufs.xattr."
#define AUFS_ROOTLESS_XATTR_PREFIX_LEN 16
/* a symlink can carry no user.* xattr: the owner of symlink NAME, when not 0:0, is recorded
 * on its directory as AUFS_ROOTLESS_LINK_OWNER + NAME = "UID:GID" */
#define AUFS_ROOTLESS_LINK_OWNER "user.aufs.lowner."
#define AUFS_ROOTLESS_LINK_OWNER_LEN 17

static inline int aufs_is_private_xattr(const char *name)
{
    return aufs_has_prefix(name, AUFS_XATTR_TRUSTED_OVERLAY) ||
           aufs_has_prefix(name, AUFS_XATTR_USER_OVERLAY) ||
           aufs_has_prefix(name, AUFS_XATTR_FUSE_OVERLAY);
}

/* libarchive's status codes (archive.h, stable ABI), for the C that calls it by address */
#define AUFS_ARCHIVE_EOF 1
#define AUFS_ARCHIVE_OK 0
#define AUFS_ARCHIVE_WARN (-20)
#define AUFS_ARCHIVE_FATAL (-30)

#endif
