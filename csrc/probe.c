/* probe.c: which kernel features can aufs use here? Called once; the caller caches it.
 *
 * Every probe asks the running kernel (headers say nothing about it) and has no side effect:
 * fs contexts are opened and closed without ever creating a superblock.
 */
#include "aufs_sys.h"

#include <fcntl.h>
#include <string.h>

static int probe_statx_mount_root(void)
{
    struct aufs_statx stx;

    memset(&stx, 0, sizeof(stx));
    if (syscall(SYS_statx, AUFS_AT_FDCWD, "/", AUFS_AT_SYMLINK_NOFOLLOW, AUFS_STATX_TYPE, &stx) != 0)
        return 0;
    return (stx.stx_attributes_mask & AUFS_STATX_ATTR_MOUNT_ROOT) != 0;
}

static int probe_openat2(void)
{
    struct aufs_open_how how;

    memset(&how, 0, sizeof(how));
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = AUFS_RESOLVE_NO_XDEV;
    long fd = syscall(SYS_openat2, AUFS_AT_FDCWD, "/", &how, sizeof(how));
    if (fd < 0)
        return 0;
    close((int)fd);
    return 1;
}

static int fs_open(const char *fstype)
{
    return (int)aufs_neg_errno(syscall(SYS_fsopen, fstype, AUFS_FSOPEN_CLOEXEC));
}

/* Does overlayfs accept `lowerdir+`, first as a path string, then as a directory fd? */
static int probe_overlay_params(int fsfd)
{
    int found = 0;
    if (syscall(SYS_fsconfig, fsfd, AUFS_FSCONFIG_SET_STRING, "lowerdir+", "/", 0) == 0)
        found |= AUFS_FEAT_OVERLAY_LOWERDIR_PLUS;
    else
        return found;
    int dirfd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd >= 0) {
        if (syscall(SYS_fsconfig, fsfd, AUFS_FSCONFIG_SET_FD, "lowerdir+", NULL, dirfd) == 0)
            found |= AUFS_FEAT_OVERLAY_LAYER_FD;
        close(dirfd);
    }
    return found;
}

int aufs_probe_features(void)
{
    int features = 0;

    if (probe_statx_mount_root())
        features |= AUFS_FEAT_STATX_MOUNT_ROOT;
    if (probe_openat2())
        features |= AUFS_FEAT_OPENAT2;

    int fsfd = fs_open("overlay");
    if (fsfd >= 0) {
        features |= AUFS_FEAT_NEW_MOUNT_API | AUFS_FEAT_OVERLAY;
        features |= probe_overlay_params(fsfd);
        close(fsfd);
    } else if (fsfd != -ENOSYS) {
        /* The API exists even if overlayfs does not (-ENODEV), or fsopen is denied (-EPERM). */
        if (fsfd == -ENODEV)
            features |= AUFS_FEAT_NEW_MOUNT_API;
    }

    int aufd = fs_open("aufs");
    if (aufd >= 0) {
        features |= AUFS_FEAT_AUFS;
        close(aufd);
    }
    return features;
}
