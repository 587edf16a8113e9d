/* core.c: small helpers shared by the other C files, the reserved names, and renameat2(2). */
#include "aufs_sys.h"

long aufs_page_size(void)
{
    long size = sysconf(_SC_PAGESIZE);
    return size > 0 ? size : 4096;
}

/* The reserved names as the C spells them (AUFS_NAME_*), NULL for an unknown one. */
const char *aufs_name(int which)
{
    static const char *const names[AUFS_NAME_COUNT] = {
        [AUFS_NAME_WHITEOUT_PREFIX] = AUFS_WHITEOUT_PREFIX,
        [AUFS_NAME_META_PREFIX] = AUFS_META_PREFIX,
        [AUFS_NAME_OPAQUE] = AUFS_OPAQUE_NAME,
        [AUFS_NAME_XATTR_TRUSTED_OVERLAY] = AUFS_XATTR_TRUSTED_OVERLAY,
        [AUFS_NAME_XATTR_USER_OVERLAY] = AUFS_XATTR_USER_OVERLAY,
        [AUFS_NAME_XATTR_FUSE_OVERLAY] = AUFS_XATTR_FUSE_OVERLAY,
    };
    return which >= 0 && which < AUFS_NAME_COUNT ? names[which] : NULL;
}

static int rename2(const char *oldpath, const char *newpath, unsigned int flags)
{
    return (int)aufs_neg_errno(syscall(SYS_renameat2, AUFS_AT_FDCWD, oldpath,
                                       AUFS_AT_FDCWD, newpath, flags));
}

/* Atomically swap two existing paths (both must exist, on one filesystem). */
int aufs_rename_exchange(const char *oldpath, const char *newpath)
{
    return rename2(oldpath, newpath, AUFS_RENAME_EXCHANGE);
}

/* rename(2) that fails with -EEXIST instead of replacing newpath. */
int aufs_rename_noreplace(const char *oldpath, const char *newpath)
{
    return rename2(oldpath, newpath, AUFS_RENAME_NOREPLACE);
}
