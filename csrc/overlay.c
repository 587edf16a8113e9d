/* overlay.c: mount overlayfs through the new mount API (fsopen/fsconfig/fsmount/move_mount).
 *
 * Each lower layer is one `lowerdir+` parameter, so a chain is limited by overlayfs (500
 * layers) and not by the one-page data limit of mount(2). fsconfig() copies string values
 * with a 256-byte limit, so longer paths are passed as an open directory (FSCONFIG_SET_FD).
 * On failure the kernel's own explanation (the fs context log) is copied into errbuf.
 */
#include "aufs_sys.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>

static long fsconfig_call(int fsfd, unsigned int cmd, const char *key, const void *value, int aux)
{
    return aufs_neg_errno(syscall(SYS_fsconfig, fsfd, cmd, key, value, aux));
}

/* Drain the fs context log ("e overlay: ..." lines) into errbuf, "; "-separated. */
static void read_log(int fsfd, char *errbuf, size_t errlen)
{
    size_t used = 0;
    char msg[512];

    if (errbuf == NULL || errlen == 0)
        return;
    errbuf[0] = '\0';
    for (int i = 0; i < 32; i++) {
        ssize_t n = read(fsfd, msg, sizeof(msg) - 1);
        if (n <= 0)
            break;
        if (msg[n - 1] == '\n')
            n--;
        msg[n] = '\0';
        int w = snprintf(errbuf + used, errlen - used, "%s%s", used ? "; " : "", msg);
        if (w < 0 || (size_t)w >= errlen - used)
            break;
        used += (size_t)w;
    }
}

/* A path goes as a string when it is short and plain; overlayfs unescapes backslashes in
 * string values, so a path holding one (a systemd-escaped "\x2d") goes as an open directory. */
static long set_path(int fsfd, const char *key, const char *path)
{
    if (strlen(path) < AUFS_FSCONFIG_STRING_MAX && strchr(path, '\\') == NULL)
        return fsconfig_call(fsfd, AUFS_FSCONFIG_SET_STRING, key, path, 0);

    int dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0)
        return -errno;
    long rc = fsconfig_call(fsfd, AUFS_FSCONFIG_SET_FD, key, NULL, dirfd);
    close(dirfd);
    return rc;
}

/* "name=value" sets a string parameter, a bare "name" a flag. */
static long set_option(int fsfd, const char *option, char *scratch, size_t scratchlen)
{
    const char *eq = strchr(option, '=');
    if (eq == NULL)
        return fsconfig_call(fsfd, AUFS_FSCONFIG_SET_FLAG, option, NULL, 0);
    size_t keylen = (size_t)(eq - option);
    if (keylen == 0 || keylen >= scratchlen)
        return -EINVAL;
    memcpy(scratch, option, keylen);
    scratch[keylen] = '\0';
    return fsconfig_call(fsfd, AUFS_FSCONFIG_SET_STRING, scratch, eq + 1, 0);
}

static long configure(int fsfd, const char *const *lowerdirs, size_t nlower,
                      const char *upperdir, const char *workdir,
                      const char *const *options, size_t noptions)
{
    char key[128];
    long rc;

    /* The source shows up in the mount table; name it like a legacy overlay mount would. */
    if ((rc = fsconfig_call(fsfd, AUFS_FSCONFIG_SET_STRING, "source", "overlay", 0)) < 0)
        return rc;
    for (size_t i = 0; i < noptions; i++)
        if ((rc = set_option(fsfd, options[i], key, sizeof(key))) < 0)
            return rc;
    for (size_t i = 0; i < nlower; i++)
        if ((rc = set_path(fsfd, "lowerdir+", lowerdirs[i])) < 0)
            return rc;
    if (upperdir != NULL && (rc = set_path(fsfd, "upperdir", upperdir)) < 0)
        return rc;
    if (workdir != NULL && (rc = set_path(fsfd, "workdir", workdir)) < 0)
        return rc;
    return fsconfig_call(fsfd, AUFS_FSCONFIG_CMD_CREATE, NULL, NULL, 0);
}

int aufs_overlay_mount(const char *target, const char *const *lowerdirs, size_t nlower,
                       const char *upperdir, const char *workdir,
                       const char *const *options, size_t noptions,
                       char *errbuf, size_t errlen)
{
    if (errbuf != NULL && errlen > 0)
        errbuf[0] = '\0';

    int fsfd = (int)aufs_neg_errno(syscall(SYS_fsopen, "overlay", AUFS_FSOPEN_CLOEXEC));
    if (fsfd < 0)
        return fsfd;

    long rc = configure(fsfd, lowerdirs, nlower, upperdir, workdir, options, noptions);
    if (rc < 0) {
        read_log(fsfd, errbuf, errlen);
        close(fsfd);
        return (int)rc;
    }

    int mntfd = (int)aufs_neg_errno(syscall(SYS_fsmount, fsfd, AUFS_FSMOUNT_CLOEXEC, 0));
    if (mntfd < 0) {
        read_log(fsfd, errbuf, errlen);
        close(fsfd);
        return mntfd;
    }
    close(fsfd);

    rc = aufs_neg_errno(syscall(SYS_move_mount, mntfd, "", AUFS_AT_FDCWD, target,
                                AUFS_MOVE_MOUNT_F_EMPTY_PATH));
    /* Closing an fsmount fd that was never attached discards the detached mount. */
    close(mntfd);
    return rc < 0 ? (int)rc : 0;
}
