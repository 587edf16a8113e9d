/* aufs_sys.h: private syscall numbers, constants and structs for the C files.
 *
 * Defined here rather than taken from <linux/...> so the build works on old headers; every
 * value is the kernel's stable ABI. Not seen by cffi.
 */
#ifndef AUFS_SYS_H
#define AUFS_SYS_H

#include "aufs_native.h"

#include <sys/syscall.h>
#include <unistd.h>

/* The syscalls added since 5.1 share one number on every architecture but alpha. */
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif

#ifndef SYS_statx
#if defined(__x86_64__)
#define SYS_statx 332
#elif defined(__aarch64__)
#define SYS_statx 291
#else
#error "SYS_statx unknown for this architecture"
#endif
#endif

#ifndef SYS_renameat2
#if defined(__x86_64__)
#define SYS_renameat2 316
#elif defined(__aarch64__)
#define SYS_renameat2 276
#else
#error "SYS_renameat2 unknown for this architecture"
#endif
#endif

#define AUFS_AT_FDCWD (-100)
#define AUFS_AT_SYMLINK_NOFOLLOW 0x100
#define AUFS_AT_NO_AUTOMOUNT 0x800
#define AUFS_AT_EMPTY_PATH 0x1000

#define AUFS_RENAME_NOREPLACE (1 << 0)
#define AUFS_RENAME_EXCHANGE (1 << 1)

#define AUFS_UMOUNT_NOFOLLOW 0x8
#define AUFS_MNT_DETACH 0x2

#define AUFS_STATX_TYPE 0x1U
#define AUFS_STATX_ATTR_MOUNT_ROOT 0x2000ULL

#define AUFS_RESOLVE_NO_XDEV 0x01ULL
#define AUFS_RESOLVE_NO_MAGICLINKS 0x02ULL
#define AUFS_RESOLVE_NO_SYMLINKS 0x04ULL
#define AUFS_RESOLVE_IN_ROOT 0x10ULL

#define AUFS_FSOPEN_CLOEXEC 0x1U
#define AUFS_FSMOUNT_CLOEXEC 0x1U
#define AUFS_MOVE_MOUNT_F_EMPTY_PATH 0x4U
#define AUFS_MOUNT_ATTR_RDONLY 0x1U
#define AUFS_FSCONFIG_SET_FLAG 0
#define AUFS_FSCONFIG_SET_STRING 1
#define AUFS_FSCONFIG_SET_FD 5
#define AUFS_FSCONFIG_CMD_CREATE 6

/* fsconfig() copies string values with a 256-byte limit; longer paths go by fd. */
#define AUFS_FSCONFIG_STRING_MAX 256

struct aufs_statx_timestamp {
    int64_t tv_sec;
    uint32_t tv_nsec;
    int32_t reserved;
};

struct aufs_statx {
    uint32_t stx_mask;
    uint32_t stx_blksize;
    uint64_t stx_attributes;
    uint32_t stx_nlink;
    uint32_t stx_uid;
    uint32_t stx_gid;
    uint16_t stx_mode;
    uint16_t spare0;
    uint64_t stx_ino;
    uint64_t stx_size;
    uint64_t stx_blocks;
    uint64_t stx_attributes_mask;
    struct aufs_statx_timestamp stx_atime, stx_btime, stx_ctime, stx_mtime;
    uint32_t stx_rdev_major, stx_rdev_minor, stx_dev_major, stx_dev_minor;
    uint64_t spare2[14];
};

struct aufs_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};

/* syscall() returns -1 and sets errno; the C core returns -errno instead. */
static inline long aufs_neg_errno(long rc)
{
    return rc < 0 ? -(long)errno : rc;
}

#endif
