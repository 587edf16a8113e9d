/* mount.c: mount(2) that never lets the kernel truncate its data, and umount2(2). */
#include "aufs_sys.h"

#include <sched.h>
#include <string.h>
#include <sys/mount.h>

/* The kernel copies at most one page of mount data and silently drops the rest (an overlay
 * with too many lower dirs comes up with fewer layers and no error), so data that does not
 * fit a page, terminating NUL included, is refused with -E2BIG before the call. */
int aufs_mount(const char *source, const char *target, const char *fstype,
               unsigned long flags, const char *data)
{
    if (data != NULL && strlen(data) >= (size_t)aufs_page_size())
        return -E2BIG;
    if (mount(source, target, fstype, flags, data) != 0)
        return -errno;
    return 0;
}

/* UMOUNT_NOFOLLOW always: a symlink planted at target must not redirect the unmount.
 * -EINVAL means "target is not a mount point"; -EBUSY is left to the caller to retry. */
int aufs_umount(const char *target, int lazy)
{
    int flags = AUFS_UMOUNT_NOFOLLOW | (lazy ? AUFS_MNT_DETACH : 0);
    if (umount2(target, flags) != 0)
        return -errno;
    return 0;
}

static int ns_flags(int which)
{
    return ((which & AUFS_NS_USER) ? CLONE_NEWUSER : 0) | ((which & AUFS_NS_MOUNT) ? CLONE_NEWNS : 0);
}

/* unshare(2) of a new user and/or mount namespace (nothing else may be asked for) */
int aufs_unshare(int which)
{
    if (which <= 0 || (which & ~(AUFS_NS_USER | AUFS_NS_MOUNT)))
        return -EINVAL;
    return unshare(ns_flags(which)) == 0 ? 0 : -errno;
}

/* setns(2) into the namespace `fd` names, which must be of the one kind asked for */
int aufs_setns(int fd, int which)
{
    if (which != AUFS_NS_USER && which != AUFS_NS_MOUNT)
        return -EINVAL;
    return setns(fd, ns_flags(which)) == 0 ? 0 : -errno;
}
