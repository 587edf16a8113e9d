/* mountpoint.c: ask the kernel whether a path is the root of a mount.
 *
 * Both methods look at the path itself, not at what its last component points to: a symlink
 * is never a mount point. They return 1 (mount point), 0 (not one) or -errno; -EOPNOTSUPP
 * means the kernel cannot answer this way and the caller must use another method.
 */
#include "aufs_sys.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* statx() reports STATX_ATTR_MOUNT_ROOT since 5.8; the attributes mask says whether the bit
 * is meaningful on this kernel and filesystem. */
int aufs_mountpoint_statx(const char *path)
{
    struct aufs_statx stx;

    memset(&stx, 0, sizeof(stx));
    if (syscall(SYS_statx, AUFS_AT_FDCWD, path, AUFS_AT_SYMLINK_NOFOLLOW | AUFS_AT_NO_AUTOMOUNT,
                AUFS_STATX_TYPE, &stx) != 0)
        return -errno;
    if (!(stx.stx_attributes_mask & AUFS_STATX_ATTR_MOUNT_ROOT))
        return -EOPNOTSUPP;
    if (S_ISLNK(stx.stx_mode))
        return 0;
    return (stx.stx_attributes & AUFS_STATX_ATTR_MOUNT_ROOT) ? 1 : 0;
}

static int openat2_call(int dirfd, const char *name, uint64_t flags, uint64_t resolve)
{
    struct aufs_open_how how;

    memset(&how, 0, sizeof(how));
    how.flags = flags;
    how.resolve = resolve;
    return (int)aufs_neg_errno(syscall(SYS_openat2, dirfd, name, &how, sizeof(how)));
}

/* Is the directory open at fd the root of a mount? Going up ("..") from a mount root crosses
 * into the parent mount, which RESOLVE_NO_XDEV refuses with EXDEV. At the process root ".."
 * stays put: that root is a mount root as far as this process can see. */
static int dir_is_mount_root(int fd)
{
    int up = openat2_call(fd, "..", O_PATH | O_CLOEXEC, AUFS_RESOLVE_NO_XDEV);
    if (up == -EXDEV)
        return 1;
    if (up < 0)
        return up;
    struct stat here, there;
    int rc = 0;
    if (fstat(fd, &here) != 0 || fstat(up, &there) != 0)
        rc = -errno;
    else
        rc = (here.st_dev == there.st_dev && here.st_ino == there.st_ino) ? 1 : 0;
    close(up);
    return rc;
}

/* openat2() with RESOLVE_NO_XDEV (5.6+): look the last component up from its parent; the
 * lookup fails with EXDEV exactly when it would step onto a mount. */
int aufs_mountpoint_openat2(const char *path)
{
    size_t len = strlen(path);
    if (len == 0)
        return -ENOENT;

    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    int rc;

    if (*name == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
        /* The path names a directory by itself ("/", "a/.", "a/.."): test it directly. */
        int fd = openat2_call(AUFS_AT_FDCWD, path, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
        if (fd < 0)
            return fd;
        rc = dir_is_mount_root(fd);
        close(fd);
        return rc;
    }

    int parent;
    if (slash == NULL) {
        parent = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    } else {
        size_t plen = slash == path ? 1 : (size_t)(slash - path);
        char *dir = malloc(plen + 1);
        if (dir == NULL)
            return -ENOMEM;
        memcpy(dir, path, plen);
        dir[plen] = '\0';
        parent = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        free(dir);
    }
    if (parent < 0)
        return -errno;

    int fd = openat2_call(parent, name, O_PATH | O_NOFOLLOW | O_CLOEXEC, AUFS_RESOLVE_NO_XDEV);
    close(parent);
    if (fd == -EXDEV)
        return 1;
    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}
