/* core.c: small helpers shared by the other C files, and renameat2(2). */
#include "aufs_sys.h"

long aufs_page_size(void)
{
    long size = sysconf(_SC_PAGESIZE);
    return size > 0 ? size : 4096;
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
