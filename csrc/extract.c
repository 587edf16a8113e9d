/* extract.c: write the entries of a layer tar, read by libarchive, under a held root directory fd.
 *
 * Why our own writer: libarchive's write-to-disk works relative to the process's current
 * directory and re-walks every path component per entry. Here every path is resolved with
 * openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) below the caller's root fd, the last
 * component is never followed, and file data moves from libarchive's buffer straight into the
 * new file: about the syscalls per file that GNU tar makes, with no way out of the root.
 *
 * libarchive is reached only through the function pointers the caller puts in struct
 * aufs_xapi (taken from the libarchive the Python side already loaded), so this file has no
 * link-time dependency on it. The loop runs without the GIL and returns to the caller only for
 * what needs policy: directories (their mtimes are set last), reserved `.wh.` names (whiteouts,
 * opaque markers, AUFS metadata), errors, and, when asked, every entry.
 *
 * State lives in the caller-owned struct aufs_xctx; nothing here is static.
 */
#include "aufs_sys.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <locale.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/xattr.h>
#include <unistd.h>

/* the largest record of the directory buffer (see struct aufs_xctx) */
#define X_RECORD_MAX ((AUFS_X_DIR_RECORD_HEAD + AUFS_X_PATH_MAX + 7) & ~(size_t)7)

/* libarchive signatures (archive.h / archive_entry.h of libarchive 3.x on Linux) */
typedef int (*x_next_header_fn)(void *, void **);
typedef int (*x_data_block_fn)(void *, const void **, size_t *, int64_t *);
typedef const char *(*x_entry_str_fn)(void *);
typedef mode_t (*x_entry_mode_fn)(void *);
typedef int64_t (*x_entry_i64_fn)(void *);
typedef time_t (*x_entry_time_fn)(void *);
typedef long (*x_entry_long_fn)(void *);
typedef dev_t (*x_entry_dev_fn)(void *);
typedef int (*x_entry_int_fn)(void *);
typedef int (*x_xattr_next_fn)(void *, const char **, const void **, size_t *);
typedef int (*x_acl_reset_fn)(void *, int);
typedef int (*x_sparse_next_fn)(void *, int64_t *, int64_t *);
typedef int (*x_acl_next_fn)(void *, int, int *, int *, int *, int *, const char **);

/* libarchive's POSIX.1e ACL constants (archive_entry.h) */
#define X_ACL_TYPE_ACCESS 0x100
#define X_ACL_TYPE_DEFAULT 0x200
#define X_ACL_USER 10001
#define X_ACL_USER_OBJ 10002
#define X_ACL_GROUP 10003
#define X_ACL_GROUP_OBJ 10004
#define X_ACL_MASK 10005
#define X_ACL_OTHER 10006
/* the kernel's system.posix_acl_* value (linux/posix_acl_xattr.h): a version, then entries of
 * le16 tag, le16 perm, le32 id, sorted by tag, then id */
#define X_POSIX_ACL_VERSION 2
#define X_ACL_MAX_ENTRIES 1024
/* ctx->flags, private to this file: a default ACL was set during this extraction */
#define X_FLAG_DEFAULT_ACL 0x100

/* Resolve `path` below the root, following symlinks only inside it. */
static int x_resolve(int root_fd, const char *path, uint64_t flags)
{
    struct aufs_open_how how = {flags | O_CLOEXEC, 0, AUFS_RESOLVE_IN_ROOT | AUFS_RESOLVE_NO_MAGICLINKS};
    long fd;
    do {
        fd = syscall(SYS_openat2, root_fd, *path ? path : ".", &how, sizeof how);
    } while (fd < 0 && (errno == EAGAIN || errno == EINTR));
    return fd < 0 ? -errno : (int)fd;
}


/* Lexically normalise a tar member name: drop leading '/', "." and empty components, let ".."
 * pop one component. Returns the length, -EXDEV if ".." would climb above the root, or
 * -ENAMETOOLONG. */
int aufs_x_normalize(const char *in, char *out, size_t outlen)
{
    size_t n = 0;
    const char *p = in;
    if (outlen == 0)
        return -ENAMETOOLONG;
    while (*p) {
        const char *start;
        size_t len;
        while (*p == '/')
            p++;
        if (!*p)
            break;
        start = p;
        while (*p && *p != '/')
            p++;
        len = (size_t)(p - start);
        if (len == 1 && start[0] == '.')
            continue;
        if (len == 2 && start[0] == '.' && start[1] == '.') {
            if (n == 0)
                return -EXDEV;
            while (n > 0 && out[n - 1] != '/')
                n--;
            if (n > 0)
                n--;
            continue;
        }
        if (n + (n ? 1 : 0) + len + 1 > outlen)
            return -ENAMETOOLONG;
        if (n)
            out[n++] = '/';
        memcpy(out + n, start, len);
        n += len;
    }
    out[n] = '\0';
    return (int)n;
}

/* True if some component of the normalised path starts with ".wh." (whiteouts and AUFS
 * metadata: the caller decides what they mean). */
static int x_is_reserved(const char *path)
{
    return strncmp(path, AUFS_WHITEOUT_PREFIX, AUFS_WHITEOUT_PREFIX_LEN) == 0 ||
           strstr(path, "/" AUFS_WHITEOUT_PREFIX) != NULL;
}

/* Remove `name` in `dir_fd` without following it; directories with all their content. */
int aufs_x_remove(int dir_fd, const char *name)
{
    struct stat st;
    int fd;
    DIR *dir;
    struct dirent *de;
    int ret = 0;

    if (unlinkat(dir_fd, name, 0) == 0)
        return 0;
    if (errno != EISDIR && errno != EPERM)
        return -errno;
    if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    if (!S_ISDIR(st.st_mode))
        return -EPERM;
    fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    dir = fdopendir(fd);
    if (!dir) {
        ret = -errno;
        close(fd);
        return ret;
    }
    while ((errno = 0, de = readdir(dir)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        ret = aufs_x_remove(fd, de->d_name);
        if (ret < 0 && ret != -ENOENT)
            break;
        ret = 0;
    }
    if (ret == 0 && errno != 0)
        ret = -errno;
    closedir(dir);
    if (ret < 0)
        return ret;
    return unlinkat(dir_fd, name, AT_REMOVEDIR) < 0 ? -errno : 0;
}

/* chmod `name` in `dir_fd` without following it if it is a symlink (fchmodat would; its
 * AT_SYMLINK_NOFOLLOW needs a new kernel or glibc): through an O_PATH fd and its magic link. */
static int x_chmod_nofollow(int dir_fd, const char *name, mode_t mode)
{
    char procpath[64];
    struct stat st;
    int fd = openat(dir_fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    int r = 0;
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0)
        r = -errno;
    else if (S_ISLNK(st.st_mode))
        r = -ELOOP;
    else {
        snprintf(procpath, sizeof procpath, "/proc/self/fd/%d", fd);
        if (chmod(procpath, mode) < 0)
            r = -errno;
    }
    close(fd);
    return r;
}

/* Append a record to the caller's directory buffer: a directory's mtime, or (nsec < 0) the
 * implied directories of `path` created here, which are the components after its first
 * `sec` bytes. */
static int x_record(struct aufs_xctx *ctx, const char *path, size_t len, int64_t sec, int64_t nsec)
{
    size_t need = (AUFS_X_DIR_RECORD_HEAD + len + 7) & ~(size_t)7;
    char *rec;
    uint32_t len32 = (uint32_t)len;
    if (!ctx->dirbuf || ctx->dirbuf_size < ctx->dirbuf_used || ctx->dirbuf_size - ctx->dirbuf_used < need)
        return -ENOBUFS;
    rec = ctx->dirbuf + ctx->dirbuf_used;
    memcpy(rec, &sec, 8);
    memcpy(rec + 8, &nsec, 8);
    memcpy(rec + 16, &len32, 4);
    memcpy(rec + AUFS_X_DIR_RECORD_HEAD, path, len);
    ctx->dirbuf_used += need;
    return 0;
}

/* Create the missing directories of `path` (0755, owned by us) below the root; returns an
 * O_PATH fd of the deepest one. A component that exists but resolves to nothing (a dangling
 * symlink) gives -ENOENT, one that is not a directory -ENOTDIR. With a ctx, the directories
 * created are recorded in its buffer (the caller gives them the lower chain's metadata). */
static int x_make_dirs(struct aufs_xctx *ctx, int root_fd, const char *path)
{
    char buf[AUFS_X_PATH_MAX];
    size_t len = strlen(path), i;
    size_t first = len + 1; /* offset of the first component created here */
    int cur = -1;

    if (len >= sizeof buf)
        return -ENAMETOOLONG;
    if (ctx && ctx->dirbuf && (ctx->dirbuf_size < ctx->dirbuf_used ||
                               ctx->dirbuf_size - ctx->dirbuf_used < X_RECORD_MAX))
        return -ENOBUFS; /* the caller empties the buffer before every call */
    memcpy(buf, path, len + 1);
    cur = x_resolve(root_fd, "", O_PATH | O_DIRECTORY);
    if (cur < 0)
        return cur;
    for (i = 0; i <= len; i++) {
        size_t start;
        int next;
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        buf[i] = '\0';
        next = x_resolve(root_fd, buf, O_PATH | O_DIRECTORY);
        if (next == -ENOENT) {
            start = i;
            while (start > 0 && buf[start - 1] != '/')
                start--;
            if (mkdirat(cur, buf + start, 0755) == 0) {
                if (first > len)
                    first = start;
                /* the umask must not decide the mode of implied directories */
                next = x_chmod_nofollow(cur, buf + start, 0755);
                if (next == 0)
                    next = x_resolve(root_fd, buf, O_PATH | O_DIRECTORY);
            } else if (errno == EEXIST) {
                /* a symlink that leads nowhere inside the root: resolving again says so */
                next = x_resolve(root_fd, buf, O_PATH | O_DIRECTORY);
            } else {
                next = -errno;
            }
        }
        if (next < 0) {
            close(cur);
            /* what was created before the failure stays, so it is recorded too */
            if (ctx && ctx->dirbuf && first <= len && first < i)
                x_record(ctx, buf, i, (int64_t)first, -1);
            return next;
        }
        close(cur);
        cur = next;
        if (i < len)
            buf[i] = '/';
    }
    if (ctx && ctx->dirbuf && first <= len)
        x_record(ctx, path, len, (int64_t)first, -1); /* room was checked above */
    return cur;
}

int aufs_x_open_dir(int root_fd, const char *path, int create)
{
    int fd = x_resolve(root_fd, path, O_PATH | O_DIRECTORY);
    if (fd == -ENOENT && create)
        fd = x_make_dirs(NULL, root_fd, path);
    return fd;
}

int aufs_x_make_dir(struct aufs_xctx *ctx, const char *path)
{
    int fd = x_resolve(ctx->root_fd, path, O_PATH | O_DIRECTORY);
    if (fd == -ENOENT)
        fd = x_make_dirs(ctx, ctx->root_fd, path);
    return fd;
}

void aufs_x_forget_parent(struct aufs_xctx *ctx)
{
    if (ctx->parent_fd >= 0)
        close(ctx->parent_fd);
    ctx->parent_fd = -1;
    ctx->parent_path[0] = '\0';
}

/* The directory that holds `path` (created if implied), and the last component in *name.
 * The fd is cached in ctx until an entry with another parent comes. */
static int x_parent(struct aufs_xctx *ctx, const char *path, const char **name)
{
    const char *slash = strrchr(path, '/');
    size_t plen;
    int fd;

    if (!slash) {
        /* the entry may replace the cached directory's ancestor: never keep a stale fd */
        aufs_x_forget_parent(ctx);
        *name = path;
        return ctx->root_fd;
    }
    *name = slash + 1;
    plen = (size_t)(slash - path);
    if (ctx->parent_fd >= 0 && strlen(ctx->parent_path) == plen &&
        memcmp(ctx->parent_path, path, plen) == 0)
        return ctx->parent_fd;
    aufs_x_forget_parent(ctx);
    memcpy(ctx->parent_path, path, plen);
    ctx->parent_path[plen] = '\0';
    fd = x_resolve(ctx->root_fd, ctx->parent_path, O_PATH | O_DIRECTORY);
    if (fd == -ENOENT)
        fd = x_make_dirs(ctx, ctx->root_fd, ctx->parent_path);
    if (fd < 0) {
        ctx->parent_path[0] = '\0';
        return fd;
    }
    ctx->parent_fd = fd;
    return fd;
}

/* Set the entry's xattrs on `fd`, or (fd < 0) on `name` in `dir_fd` without following it. */
static int x_xattrs(struct aufs_xctx *ctx, int fd, int dir_fd, const char *name)
{
    const struct aufs_xapi *api = ctx->api;
    const char *key;
    const void *value;
    size_t size;
    char procpath[64 + AUFS_X_PATH_MAX];
    char keybuf[256]; /* XATTR_NAME_MAX + 1 */

    if (((x_entry_int_fn)api->entry_xattr_reset)(ctx->entry) <= 0)
        return 0;
    if (fd < 0)
        snprintf(procpath, sizeof procpath, "/proc/self/fd/%d/%s", dir_fd, name);
    while (((x_xattr_next_fn)api->entry_xattr_next)(ctx->entry, &key, &value, &size) == AUFS_ARCHIVE_OK) {
        int r;
        if (!key || !*key || aufs_is_private_xattr(key))
            continue;
        if ((ctx->flags & AUFS_X_FLAG_ROOTLESS) && strncmp(key, "user.", 5) != 0 &&
            strncmp(key, "system.posix_acl_", 17) != 0) {
            /* an unprivileged user may set user.* (and the ACLs of their own files) only:
             * keep the others under our prefix */
            if (strlen(key) + AUFS_ROOTLESS_XATTR_PREFIX_LEN >= sizeof keybuf)
                return -ERANGE;
            snprintf(keybuf, sizeof keybuf, "%s%s", AUFS_ROOTLESS_XATTR_PREFIX, key);
            key = keybuf;
        }
        if (fd >= 0)
            r = fsetxattr(fd, key, value, size, 0);
        else
            r = lsetxattr(procpath, key, value, size, 0);
        if (r < 0) {
            /* the kernel allows user.* xattrs on regular files and directories only: an
             * archive asking for one elsewhere is at fault (EINVAL: "bad layer tar"), unlike
             * a host that refuses (EPERM: an OS error) */
            if (errno == EPERM && strncmp(key, "user.", 5) == 0 && !S_ISREG(ctx->mode) &&
                !S_ISDIR(ctx->mode))
                return -EINVAL;
            return -errno;
        }
        if (strcmp(key, "system.posix_acl_default") == 0)
            ctx->flags |= X_FLAG_DEFAULT_ACL;
    }
    return 0;
}

struct x_acl_entry {
    uint16_t tag;
    uint16_t perm;
    uint32_t id;
};

/* True if the entry carries the xattr `key` itself (SCHILY.xattr.*: GNU tar writes the
 * kernel's ACL value there next to the SCHILY.acl text). */
static int x_has_xattr(struct aufs_xctx *ctx, const char *key)
{
    const char *k;
    const void *value;
    size_t size;
    if (((x_entry_int_fn)ctx->api->entry_xattr_reset)(ctx->entry) <= 0)
        return 0;
    while (((x_xattr_next_fn)ctx->api->entry_xattr_next)(ctx->entry, &k, &value, &size) == AUFS_ARCHIVE_OK)
        if (k && strcmp(k, key) == 0)
            return 1;
    return 0;
}

/* An ACL entry that names its user or group without an id (GNU tar's SCHILY.acl text): the
 * host's id for that name, as GNU tar and bsdtar look it up. -1 if there is none. */
static int64_t x_acl_lookup(int user, const char *name)
{
    char buf[4096];
    if (!name || !*name)
        return -1;
    if (user) {
        struct passwd pw, *found = NULL;
        if (getpwnam_r(name, &pw, buf, sizeof buf, &found) == 0 && found)
            return (int64_t)found->pw_uid;
    } else {
        struct group gr, *found = NULL;
        if (getgrnam_r(name, &gr, buf, sizeof buf, &found) == 0 && found)
            return (int64_t)found->gr_gid;
    }
    return -1;
}

static uint16_t x_acl_kernel_tag(int tag)
{
    switch (tag) {
    case X_ACL_USER_OBJ: return 0x01;
    case X_ACL_USER: return 0x02;
    case X_ACL_GROUP_OBJ: return 0x04;
    case X_ACL_GROUP: return 0x08;
    case X_ACL_MASK: return 0x10;
    case X_ACL_OTHER: return 0x20;
    default: return 0;
    }
}

/* Set the entry's POSIX.1e ACL of one type (SCHILY.acl.access / .default, parsed by
 * libarchive) as the kernel's xattr, as bsdtar -p --acls does, but with the numeric ids (as
 * for owners: the host's user database is not the image's). Set after the mode: the kernel
 * then takes the group bits from mask:: (libarchive's mode carries group::). Only ACLs beyond
 * the three entries the mode already says are set. */
static int x_acl(struct aufs_xctx *ctx, int fd, const char *procpath, int type, const char *key)
{
    const struct aufs_xapi *api = ctx->api;
    struct x_acl_entry ents[X_ACL_MAX_ENTRIES];
    unsigned char blob[4 + sizeof ents];
    size_t n = 0, i;
    int etype, perm, tag, qual, count, r;
    const char *name;
    uint32_t version = X_POSIX_ACL_VERSION;

    if (x_has_xattr(ctx, key))
        return 1; /* set from the kernel's own value, with its numeric ids */
    count = ((x_acl_reset_fn)api->entry_acl_reset)(ctx->entry, type);
    if (count <= (type == X_ACL_TYPE_ACCESS ? 3 : 0))
        return 0;
    while (((x_acl_next_fn)api->entry_acl_next)(ctx->entry, type, &etype, &perm, &tag, &qual,
                                                 &name) == AUFS_ARCHIVE_OK) {
        struct x_acl_entry e;
        uint16_t ktag = x_acl_kernel_tag(tag);
        if (etype != type || ktag == 0)
            continue;
        if (n == X_ACL_MAX_ENTRIES)
            return -E2BIG;
        e.tag = ktag;
        e.perm = (uint16_t)(perm & 7);
        e.id = 0xffffffffu;
        if (ktag == 0x02 || ktag == 0x08) {
            int64_t id = qual >= 0 ? (int64_t)qual : x_acl_lookup(ktag == 0x02, name);
            if (id < 0 || id >= 0xffffffffLL)
                return -EINVAL; /* a name unknown here and no id: nothing to set */
            e.id = (uint32_t)id;
        }
        /* insertion sort by tag, then id: the kernel refuses any other order */
        i = n++;
        while (i > 0 && (ents[i - 1].tag > e.tag || (ents[i - 1].tag == e.tag && ents[i - 1].id > e.id))) {
            ents[i] = ents[i - 1];
            i--;
        }
        ents[i] = e;
    }
    if (n == 0)
        return 0;
    memcpy(blob, &version, 4); /* little-endian, as every Linux target this builds for */
    memcpy(blob + 4, ents, n * sizeof ents[0]);
    if (fd >= 0)
        r = fsetxattr(fd, key, blob, 4 + n * sizeof ents[0], 0);
    else
        r = lsetxattr(procpath, key, blob, 4 + n * sizeof ents[0], 0);
    if (r < 0)
        return -errno;
    if (type == X_ACL_TYPE_DEFAULT)
        ctx->flags |= X_FLAG_DEFAULT_ACL;
    return 1;
}

/* Remove an ACL the entry does not have, but its directory handed down when it was created. */
static int x_drop_acl(int fd, const char *procpath, const char *key)
{
    int r = fd >= 0 ? fremovexattr(fd, key) : lremovexattr(procpath, key);
    if (r < 0 && errno != ENODATA && errno != ENOTSUP && errno != EOPNOTSUPP)
        return -errno;
    return 0;
}

static int x_acls(struct aufs_xctx *ctx, int fd, int dir_fd, const char *name)
{
    char procpath[64 + AUFS_X_PATH_MAX];
    int r;
    if (fd < 0)
        snprintf(procpath, sizeof procpath, "/proc/self/fd/%d/%s", dir_fd, name);
    int is_dir = (ctx->mode & S_IFMT) == S_IFDIR;
    int access, dflt = 0;
    access = x_acl(ctx, fd, procpath, X_ACL_TYPE_ACCESS, "system.posix_acl_access");
    if (access < 0)
        return access;
    if (is_dir) {
        dflt = x_acl(ctx, fd, procpath, X_ACL_TYPE_DEFAULT, "system.posix_acl_default");
        if (dflt < 0)
            return dflt;
    }
    /* once a directory of this archive has a default ACL, entries created below it inherit
     * one; the archive says what each entry's ACL is, as GNU tar and bsdtar --acls take it */
    if (ctx->flags & X_FLAG_DEFAULT_ACL) {
        if (access == 0 && (r = x_drop_acl(fd, procpath, "system.posix_acl_access")) < 0)
            return r;
        if (is_dir && dflt == 0 && (r = x_drop_acl(fd, procpath, "system.posix_acl_default")) < 0)
            return r;
    }
    return 0;
}

static void x_times(const struct aufs_xctx *ctx, struct timespec ts[2])
{
    ts[0].tv_sec = ts[1].tv_sec = (time_t)ctx->mtime_sec;
    ts[0].tv_nsec = ts[1].tv_nsec = (long)ctx->mtime_nsec;
}

/* Rootless: the entry's owner, full mode and type as the override xattr on `fd` (a regular
 * file or a directory: user.* xattrs go on nothing else), and on disk a mode the store's owner
 * can work with (u+rw, u+rwx for directories) and never setuid, setgid or sticky. Entries
 * that disk shows exactly (0:0, same mode, a file or directory) get no xattr: the store's
 * owner stands for root. `type` is NULL for what the inode itself is. */
static int x_rootless_meta(struct aufs_xctx *ctx, int fd, const char *type)
{
    mode_t want = (mode_t)(ctx->mode & 07777);
    mode_t disk = want & 0777;
    char value[96];
    int dir = (ctx->mode & S_IFMT) == S_IFDIR;
    disk |= dir ? 0700 : 0600;
    if (fchmod(fd, disk) < 0)
        return -errno;
    if (type == NULL && ctx->uid == 0 && ctx->gid == 0 && disk == want) {
        if (fremovexattr(fd, AUFS_ROOTLESS_OVERRIDE) < 0 && errno != ENODATA)
            return errno == ENOTSUP ? 0 : -errno;
        return 0;
    }
    snprintf(value, sizeof value, "%lld:%lld:0%o:%s", (long long)ctx->uid, (long long)ctx->gid,
             (unsigned)want, type ? type : dir ? "dir" : "file");
    if (fsetxattr(fd, AUFS_ROOTLESS_OVERRIDE, value, strlen(value), 0) < 0)
        return -errno;
    return 0;
}

/* A userns store (AUFS_X_FLAG_USERNS): the entry's owner set for real when this user
 * namespace maps both ids. 0 done, 1 to be recorded instead (not a userns store, or an id
 * the namespace does not map: EINVAL), -errno. `fd` or else `name` in `dir_fd`, unfollowed. */
static int x_userns_chown(struct aufs_xctx *ctx, int fd, int dir_fd, const char *name)
{
    int r;
    if (!(ctx->flags & AUFS_X_FLAG_USERNS))
        return 1;
    if (fd >= 0)
        r = fchown(fd, (uid_t)ctx->uid, (gid_t)ctx->gid);
    else
        r = fchownat(dir_fd, name, (uid_t)ctx->uid, (gid_t)ctx->gid, AT_SYMLINK_NOFOLLOW);
    if (r == 0)
        return 0;
    return errno == EINVAL ? 1 : -errno;
}

/* A userns store, owner set for real: the full mode too, and no record left from an entry
 * this one replaces (a directory is kept, not made again). */
static int x_userns_mode(struct aufs_xctx *ctx, int fd)
{
    if (fchmod(fd, (mode_t)(ctx->mode & 07777)) < 0)
        return -errno;
    if ((ctx->mode & S_IFMT) == S_IFDIR && fremovexattr(fd, AUFS_ROOTLESS_OVERRIDE) < 0 &&
        errno != ENODATA && errno != ENOTSUP)
        return -errno;
    return 0;
}

/* Owner before mode (chown clears setuid/setgid), xattrs after both (chown clears
 * security.capability). */
static int x_meta_fd(struct aufs_xctx *ctx, int fd, int set_times)
{
    struct timespec ts[2];
    int r;
    if (ctx->flags & AUFS_X_FLAG_ROOTLESS) {
        r = x_userns_chown(ctx, fd, -1, NULL);
        if (r == 0)
            r = x_userns_mode(ctx, fd);
        else if (r == 1)
            r = x_rootless_meta(ctx, fd, NULL);
        if (r < 0)
            return r;
    } else if (fchown(fd, (uid_t)ctx->uid, (gid_t)ctx->gid) < 0) {
        return -errno;
    } else if (fchmod(fd, (mode_t)(ctx->mode & 07777)) < 0) {
        return -errno;
    }
    r = x_xattrs(ctx, fd, -1, NULL);
    if (r == 0)
        r = x_acls(ctx, fd, -1, NULL);
    if (r < 0)
        return r;
    if (set_times) {
        x_times(ctx, ts);
        if (futimens(fd, ts) < 0)
            return -errno;
    }
    return 0;
}

static int x_meta_at(struct aufs_xctx *ctx, int dir_fd, const char *name, int chmod_too)
{
    struct timespec ts[2];
    int r;
    /* rootless: the owner is set (userns store) or recorded by the caller; only symlinks
     * and a userns store's nodes come here */
    if (!(ctx->flags & AUFS_X_FLAG_ROOTLESS) &&
        fchownat(dir_fd, name, (uid_t)ctx->uid, (gid_t)ctx->gid, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    if (chmod_too) {
        r = x_chmod_nofollow(dir_fd, name, (mode_t)(ctx->mode & 07777));
        if (r < 0)
            return r;
    }
    r = x_xattrs(ctx, -1, dir_fd, name);
    if (r == 0 && (ctx->mode & S_IFMT) != S_IFLNK)
        r = x_acls(ctx, -1, dir_fd, name);
    if (r < 0)
        return r;
    x_times(ctx, ts);
    if (utimensat(dir_fd, name, ts, AT_SYMLINK_NOFOLLOW) < 0)
        return -errno;
    return 0;
}

static int x_write_all(int fd, const char *buf, size_t len, int64_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        buf += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

/* Move the entry's data into fd. Holes of sparse entries stay holes. */
/* A new file NAME (flags include O_CREAT|O_EXCL): an existing entry is removed first, never
 * written into, since its inode may be shared with the layer being replaced (hard-link clone).
 * Returns the fd or -errno. */
static int x_open_fresh(int dir_fd, const char *name, int flags)
{
    int fd = openat(dir_fd, name, flags, 0600);
    if (fd < 0 && errno == EEXIST) {
        int r = aufs_x_remove(dir_fd, name);
        if (r < 0)
            return r;
        fd = openat(dir_fd, name, flags, 0600);
    }
    return fd < 0 ? -errno : fd;
}

static int x_copy_data(struct aufs_xctx *ctx, int fd)
{
    x_data_block_fn data_block = (x_data_block_fn)ctx->api->read_data_block;
    int64_t end = 0;
    for (;;) {
        const void *buf;
        size_t len;
        int64_t off;
        int r = data_block(ctx->archive, &buf, &len, &off);
        if (r == AUFS_ARCHIVE_EOF)
            break;
        if (r != AUFS_ARCHIVE_OK) {
            ctx->archive_status = r;
            return AUFS_X_ARCHIVE;
        }
        if (len == 0)
            continue;
        if (off < 0 || (int64_t)len > ctx->size || off > ctx->size - (int64_t)len)
            return AUFS_X_CORRUPT;
        if (ctx->max_bytes >= 0 && (int64_t)len > ctx->max_bytes - ctx->bytes)
            return AUFS_X_LIMIT;
        r = x_write_all(fd, buf, len, off);
        if (r < 0)
            return r;
        ctx->bytes += (int64_t)len;
        if (off + (int64_t)len > end)
            end = off + (int64_t)len;
    }
    if (end < ctx->size && ftruncate(fd, (off_t)ctx->size) < 0)
        return -errno;
    return 0;
}

/* Entries declaring more than this are checked against the free space before any write. */
#define X_FREE_CHECK_SIZE ((int64_t)64 << 20)

/* The bytes of data a sparse entry holds (its holes cost nothing): the sum of its map. */
static int64_t x_sparse_data(struct aufs_xctx *ctx)
{
    int64_t off, len, total = 0;
    ((x_entry_int_fn)ctx->api->entry_sparse_reset)(ctx->entry);
    while (((x_sparse_next_fn)ctx->api->entry_sparse_next)(ctx->entry, &off, &len) == AUFS_ARCHIVE_OK) {
        if (len < 0 || len > INT64_MAX - total)
            return INT64_MAX;
        total += len;
    }
    return total < ctx->size ? total : ctx->size;
}

static int x_regular(struct aufs_xctx *ctx, int dir_fd, const char *name)
{
    const int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    int sparse = ((x_entry_int_fn)ctx->api->entry_sparse_count)(ctx->entry) > 0;
    /* what the entry will cost on disk and against max_bytes: its data, not its size */
    int64_t data = sparse ? x_sparse_data(ctx) : ctx->size;
    int fd, r;

    if (ctx->max_bytes >= 0 && data > ctx->max_bytes - ctx->bytes)
        return AUFS_X_LIMIT;
    if (data > X_FREE_CHECK_SIZE) {
        /* a tar bomb must not fill the disk before it is found out */
        struct statvfs sv;
        if (fstatvfs(dir_fd, &sv) == 0 && (int64_t)(sv.f_bavail * sv.f_frsize) < data)
            return -ENOSPC;
    }
    fd = x_open_fresh(dir_fd, name, flags);
    if (fd < 0)
        return fd;
    r = x_copy_data(ctx, fd);
    if (r == 0)
        r = x_meta_fd(ctx, fd, 1);
    if (close(fd) < 0 && r == 0)
        r = -errno;
    return r;
}

/* Record the current directory's mtime in the caller's buffer (set once all content is in);
 * AUFS_X_DIR hands it to the caller when the buffer is full. */
static int x_note_dir(struct aufs_xctx *ctx)
{
    if (x_record(ctx, ctx->path, strlen(ctx->path), ctx->mtime_sec, ctx->mtime_nsec) < 0)
        return AUFS_X_DIR;
    return 0;
}

static int x_directory(struct aufs_xctx *ctx, int dir_fd, const char *name)
{
    struct stat st;
    int fd, r;

    if (mkdirat(dir_fd, name, 0700) < 0) {
        if (errno != EEXIST)
            return -errno;
        if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            return -errno;
        if (!S_ISDIR(st.st_mode)) {
            r = aufs_x_remove(dir_fd, name);
            if (r < 0)
                return r;
            if (mkdirat(dir_fd, name, 0700) < 0)
                return -errno;
        }
    }
    fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    r = x_meta_fd(ctx, fd, 0);
    close(fd);
    return r < 0 ? r : x_note_dir(ctx);
}

/* Rootless: record a symlink's owner and target on its directory, as UID:GID:TARGET (dir_fd
 * may be an O_PATH fd: through its magic link), or drop a stale record for a 0:0 one or
 * (`record` 0) one whose owner was set for real. */
static int x_rootless_link_owner(struct aufs_xctx *ctx, int dir_fd, const char *name,
                                 const char *target, int record)
{
    char key[256], dirpath[64], value[48 + AUFS_X_PATH_MAX];
    if (snprintf(key, sizeof key, AUFS_ROOTLESS_LINK_OWNER "%s", name) >= (int)sizeof key)
        return !record || (ctx->uid == 0 && ctx->gid == 0) ? 0 : -ENAMETOOLONG;
    snprintf(dirpath, sizeof dirpath, "/proc/self/fd/%d", dir_fd);
    if (!record || (ctx->uid == 0 && ctx->gid == 0)) {
        if (removexattr(dirpath, key) < 0 && errno != ENODATA && errno != ENOTSUP)
            return -errno;
        return 0;
    }
    /* with the target: a symlink put in its place later (through a mount, whose copy-up
     * carries the directory's xattrs along) points elsewhere and is not taken for this one */
    snprintf(value, sizeof value, "%lld:%lld:%s", (long long)ctx->uid, (long long)ctx->gid, target);
    return setxattr(dirpath, key, value, strlen(value), 0) < 0 ? -errno : 0;
}

static int x_symlink(struct aufs_xctx *ctx, int dir_fd, const char *name)
{
    const char *target = ((x_entry_str_fn)ctx->api->entry_symlink)(ctx->entry);
    int r;
    if (!target || !*target)
        return AUFS_X_CORRUPT;
    /* The target is data, stored as it is, even one that climbs above the layer root
     * (`up -> ..`): in a root filesystem `/..` is `/`, and nothing here follows a link
     * except inside the root (RESOLVE_IN_ROOT), as containerd, umoci and GNU tar do.
     * The kernel refuses a target of PATH_MAX bytes or more: say so before it. */
    if (strnlen(target, AUFS_X_PATH_MAX) >= AUFS_X_PATH_MAX)
        return -ENAMETOOLONG;
    if (symlinkat(target, dir_fd, name) < 0) {
        if (errno != EEXIST)
            return -errno;
        r = aufs_x_remove(dir_fd, name);
        if (r < 0)
            return r;
        if (symlinkat(target, dir_fd, name) < 0)
            return -errno;
    }
    if (ctx->flags & AUFS_X_FLAG_ROOTLESS) {
        r = x_userns_chown(ctx, -1, dir_fd, name);
        if (r >= 0)
            r = x_rootless_link_owner(ctx, dir_fd, name, target, r == 1);
        if (r < 0)
            return r;
    }
    return x_meta_at(ctx, dir_fd, name, 0);
}

/* Rootless: a device or fifo as an empty regular file whose override xattr names the type
 * (an unprivileged user can make no device; a real fifo could carry no user.* xattr). */
static int x_rootless_node(struct aufs_xctx *ctx, int dir_fd, const char *name, mode_t type,
                           dev_t dev)
{
    const int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    char kind[64];
    struct timespec ts[2];
    int fd, r;
    if (type == S_IFCHR && dev == 0) {
        /* the overlay whiteout: what it means (and how the store exports it) is the AUFS
         * whiteout file .wh.NAME, which needs no privilege */
        char wh[AUFS_X_PATH_MAX];
        if (snprintf(wh, sizeof wh, AUFS_WHITEOUT_PREFIX "%s", name) >= (int)sizeof wh)
            return -ENAMETOOLONG;
        r = aufs_x_remove(dir_fd, name);
        if (r < 0 && r != -ENOENT)
            return r;
        fd = openat(dir_fd, wh, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0444);
        if (fd < 0)
            return -errno;
        r = fchmod(fd, 0444) < 0 ? -errno : 0;
        close(fd);
        return r;
    }
    if (type == S_IFIFO)
        snprintf(kind, sizeof kind, "pipe");
    else
        snprintf(kind, sizeof kind, "%s-%u-%u", type == S_IFCHR ? "char" : "block",
                 major(dev), minor(dev));
    fd = x_open_fresh(dir_fd, name, flags);
    if (fd < 0)
        return fd;
    r = x_rootless_meta(ctx, fd, kind);
    if (r == 0)
        r = x_xattrs(ctx, fd, -1, NULL);
    if (r == 0) {
        x_times(ctx, ts);
        if (futimens(fd, ts) < 0)
            r = -errno;
    }
    close(fd);
    return r;
}

static int x_node(struct aufs_xctx *ctx, int dir_fd, const char *name)
{
    x_entry_dev_fn major_fn = (x_entry_dev_fn)ctx->api->entry_rdevmajor;
    x_entry_dev_fn minor_fn = (x_entry_dev_fn)ctx->api->entry_rdevminor;
    dev_t dev = 0;
    mode_t type = (mode_t)(ctx->mode & S_IFMT);
    int r;
    if (type != S_IFIFO)
        dev = makedev(major_fn(ctx->entry), minor_fn(ctx->entry));
    if ((ctx->flags & AUFS_X_FLAG_ROOTLESS) && !(ctx->flags & AUFS_X_FLAG_USERNS))
        return x_rootless_node(ctx, dir_fd, name, type, dev);
    if (mknodat(dir_fd, name, type | 0600, dev) < 0) {
        if (errno == EEXIST) {
            r = aufs_x_remove(dir_fd, name);
            if (r < 0)
                return r;
            if (mknodat(dir_fd, name, type | 0600, dev) == 0)
                goto made;
        }
        /* a user namespace may make fifos and 0/0 whiteouts, no other device */
        if (errno == EPERM && (ctx->flags & AUFS_X_FLAG_USERNS))
            return x_rootless_node(ctx, dir_fd, name, type, dev);
        return -errno;
    }
made:
    if (ctx->flags & AUFS_X_FLAG_USERNS) {
        r = x_userns_chown(ctx, -1, dir_fd, name);
        if (r == 1) { /* an owner the namespace does not map: recorded on an empty file */
            r = aufs_x_remove(dir_fd, name);
            if (r == 0)
                r = x_rootless_node(ctx, dir_fd, name, type, dev);
            return r;
        }
        if (r < 0)
            return r;
    }
    return x_meta_at(ctx, dir_fd, name, 1);
}

static int x_hardlink(struct aufs_xctx *ctx, int dir_fd, const char *name)
{
    const char *target = ctx->link;
    const char *slash = strrchr(target, '/');
    const char *tname = slash ? slash + 1 : target;
    struct stat a, b;
    int tfd, r = 0;

    if (!*target)
        return -EISDIR; /* a hard link to the root directory */
    if (slash) {
        char tparent[AUFS_X_PATH_MAX];
        size_t plen = (size_t)(slash - target);
        if (plen >= sizeof tparent)
            return -ENAMETOOLONG;
        memcpy(tparent, target, plen);
        tparent[plen] = '\0';
        tfd = x_resolve(ctx->root_fd, tparent, O_PATH | O_DIRECTORY);
        if (tfd < 0)
            return tfd;
    } else {
        tfd = ctx->root_fd;
    }
    if (linkat(tfd, tname, dir_fd, name, 0) < 0) {
        r = -errno;
        /* a hard link to a directory is the archive's fault (EISDIR: "bad layer tar"); any
         * other EPERM is the host refusing (an OS error) */
        if (r == -EPERM && fstatat(tfd, tname, &a, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(a.st_mode))
            r = -EISDIR;
        if (r == -EEXIST) {
            if (fstatat(tfd, tname, &a, AT_SYMLINK_NOFOLLOW) == 0 &&
                fstatat(dir_fd, name, &b, AT_SYMLINK_NOFOLLOW) == 0 && a.st_dev == b.st_dev &&
                a.st_ino == b.st_ino) {
                r = 0; /* already that very inode */
            } else {
                r = aufs_x_remove(dir_fd, name);
                if (r == 0 && linkat(tfd, tname, dir_fd, name, 0) < 0)
                    r = -errno;
            }
        }
    }
    if (tfd != ctx->root_fd)
        close(tfd);
    return r;
}

/* The root entry ("./"): only a directory may stand there; it keeps its inode. */
static int x_root(struct aufs_xctx *ctx)
{
    int r;
    if (ctx->is_hardlink || (ctx->mode & S_IFMT) != S_IFDIR)
        return AUFS_X_UNSAFE;
    r = x_meta_fd(ctx, ctx->root_fd, 0);
    return r < 0 ? r : x_note_dir(ctx);
}

int aufs_x_write(struct aufs_xctx *ctx)
{
    const char *name;
    int dir_fd;

    /* the caller may have stored a name that fills the whole buffer: without its NUL every
     * string function below would run into the next field */
    if (!memchr(ctx->path, '\0', sizeof ctx->path) ||
        (ctx->is_hardlink && !memchr(ctx->link, '\0', sizeof ctx->link)))
        return -ENAMETOOLONG;
    if (!ctx->path[0])
        return x_root(ctx);
    dir_fd = x_parent(ctx, ctx->path, &name);
    if (dir_fd < 0)
        return dir_fd;
    if (ctx->is_hardlink)
        return x_hardlink(ctx, dir_fd, name);
    switch (ctx->mode & S_IFMT) {
    case S_IFREG:
        return x_regular(ctx, dir_fd, name);
    case S_IFDIR:
        return x_directory(ctx, dir_fd, name);
    case S_IFLNK:
        return x_symlink(ctx, dir_fd, name);
    case S_IFCHR:
    case S_IFBLK:
    case S_IFIFO:
        return x_node(ctx, dir_fd, name);
    default:
        return 0; /* sockets and unknown types are skipped, as tar does */
    }
}

/* Fill ctx with the current entry's header. */
static int x_load(struct aufs_xctx *ctx)
{
    const struct aufs_xapi *api = ctx->api;
    void *e = ctx->entry;
    const char *raw = ((x_entry_str_fn)api->entry_pathname)(e);
    const char *link = ((x_entry_str_fn)api->entry_hardlink)(e);
    int n;

    if (!raw || !*raw)
        return AUFS_X_CORRUPT; /* no name at all: a header libarchive could not make sense of */
    ctx->mode = (unsigned int)((x_entry_mode_fn)api->entry_mode)(e);
    ctx->uid = ((x_entry_i64_fn)api->entry_uid)(e);
    ctx->gid = ((x_entry_i64_fn)api->entry_gid)(e);
    ctx->mtime_sec = (int64_t)((x_entry_time_fn)api->entry_mtime)(e);
    ctx->mtime_nsec = (int64_t)((x_entry_long_fn)api->entry_mtime_nsec)(e);
    ctx->size = ((x_entry_i64_fn)api->entry_size)(e);
    /* 4294967295 (GNU base-256 headers carry it, e.g. CPython's testtar.tar) is (uid_t)-1:
     * fchown then leaves that id as the writer made it, which is what GNU tar and bsdtar do */
    if (ctx->size < 0 || ctx->uid < 0 || ctx->gid < 0 || ctx->uid > 0xffffffffLL ||
        ctx->gid > 0xffffffffLL || ctx->mtime_nsec < 0 || ctx->mtime_nsec > 999999999)
        return AUFS_X_CORRUPT;
    ctx->is_hardlink = link != NULL && *link != '\0';
    ctx->link[0] = '\0';
    n = aufs_x_normalize(raw, ctx->path, sizeof ctx->path);
    if (n < 0) {
        /* the error names this entry (as much of its name as fits), not what the buffer held */
        snprintf(ctx->path, sizeof ctx->path, "%s", raw);
        return n == -EXDEV ? AUFS_X_UNSAFE : n;
    }
    if (ctx->is_hardlink) {
        n = aufs_x_normalize(link, ctx->link, sizeof ctx->link);
        if (n < 0) {
            snprintf(ctx->link, sizeof ctx->link, "%s", link);
            return n == -EXDEV ? AUFS_X_UNSAFE : n;
        }
    }
    if (x_is_reserved(ctx->path) || (ctx->is_hardlink && x_is_reserved(ctx->link)))
        return AUFS_X_SPECIAL;
    return 0;
}

/* A header libarchive refused. ctx->path keeps the last entry written; ctx->link gets the
 * refused entry's own name when libarchive read one (else ""), and a NULL entry marks the
 * failure as the header's, so the caller names the entry that failed, not the one before. */
static void x_failed_header(struct aufs_xctx *ctx)
{
    const char *raw = ctx->entry ? ((x_entry_str_fn)ctx->api->entry_pathname)(ctx->entry) : NULL;
    snprintf(ctx->link, sizeof ctx->link, "%s", raw ? raw : "");
    ctx->is_hardlink = 0;
    ctx->entry = NULL;
}

/* The header just read: load it, write it. 0 when the loop may go on. */
static int x_entry(struct aufs_xctx *ctx)
{
    int r;
    ctx->entries++;
    r = x_load(ctx);
    if (r != 0)
        return r;
    r = aufs_x_write(ctx);
    if (r != 0)
        return r;
    return (ctx->flags & AUFS_X_FLAG_REPORT_ALL) ? AUFS_X_DONE : 0;
}

int aufs_x_next(struct aufs_xctx *ctx)
{
    x_next_header_fn next_header = (x_next_header_fn)ctx->api->read_next_header;
    for (;;) {
        int r;
        /* an entry may record one implied-directory record and one directory time */
        if (ctx->dirbuf && (ctx->dirbuf_size < ctx->dirbuf_used ||
                            ctx->dirbuf_size - ctx->dirbuf_used < 2 * X_RECORD_MAX))
            return AUFS_X_FLUSH;
        r = next_header(ctx->archive, &ctx->entry);
        if (r == AUFS_ARCHIVE_EOF)
            return AUFS_X_EOF;
        if (r == AUFS_ARCHIVE_WARN) {
            /* the header is read: whether the warning means lost data is the caller's call */
            ctx->archive_status = r;
            return AUFS_X_WARN;
        }
        if (r != AUFS_ARCHIVE_OK) {
            ctx->archive_status = r;
            x_failed_header(ctx);
            return AUFS_X_ARCHIVE;
        }
        r = x_entry(ctx);
        if (r != 0)
            return r;
    }
}

/* The caller refused the warned header: it is reported as a failed header (by its name). */
void aufs_x_refuse(struct aufs_xctx *ctx)
{
    x_failed_header(ctx);
}

int aufs_x_resume(struct aufs_xctx *ctx)
{
    int r = x_entry(ctx);
    return r != 0 ? r : aufs_x_next(ctx);
}

/* A thread-local C.UTF-8 LC_CTYPE for the read: libarchive converts pax names from UTF-8 to
 * the locale's charset, and under LC_ALL=C or POSIX that would turn every non-ASCII name into
 * a failure; under UTF-8 a name that is valid stays as it is and one that is not (Go writes
 * raw bytes without hdrcharset=BINARY) is kept raw with a warning. NULL if the C library has
 * no such locale. */
void *aufs_x_utf8_locale(void)
{
    locale_t loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
    return loc == (locale_t)0 ? NULL : (void *)loc;
}

/* uselocale for the calling thread; returns the previous one (restore it with this call). */
void *aufs_x_use_locale(void *loc)
{
    return (void *)uselocale((locale_t)loc);
}

void aufs_x_free_locale(void *loc)
{
    if (loc)
        freelocale((locale_t)loc);
}

int aufs_x_dir_times(int root_fd, const char *path, int64_t sec, int64_t nsec)
{
    struct timespec ts[2];
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    struct stat st;
    int dir_fd, r = 0;

    ts[0].tv_sec = ts[1].tv_sec = (time_t)sec;
    ts[0].tv_nsec = ts[1].tv_nsec = (long)nsec;
    if (!*path)
        return futimens(root_fd, ts) < 0 ? -errno : 0;
    if (slash) {
        char parent[AUFS_X_PATH_MAX];
        size_t plen = (size_t)(slash - path);
        if (plen >= sizeof parent)
            return -ENAMETOOLONG;
        memcpy(parent, path, plen);
        parent[plen] = '\0';
        dir_fd = x_resolve(root_fd, parent, O_PATH | O_DIRECTORY);
        if (dir_fd < 0)
            return dir_fd;
    } else {
        dir_fd = root_fd;
    }
    /* a later entry may have replaced the directory: then its time is not ours to set */
    if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        r = -errno;
    else if (S_ISDIR(st.st_mode) && utimensat(dir_fd, name, ts, AT_SYMLINK_NOFOLLOW) < 0)
        r = -errno;
    if (dir_fd != root_fd)
        close(dir_fd);
    return r;
}

/* Give the implied directory `path` below root_fd what the same path is in the lower chain's
 * union (template_fd), as an overlay copy-up does: owner, then mode (setuid/setgid/sticky
 * too: chown clears them), then xattrs but the union's private ones. The lookup below the
 * template never follows a symlink, not even in a parent component: in the union, the upper
 * directory hides a lower symlink, so nothing below it is a lower counterpart. Nor below the
 * root (a directory made through the layer's own symlink is left as it is). `names` and
 * `value` are scratch buffers for the xattr list and one value. Returns 1 when copied, 0 when
 * the template has no directory there or `path` is no longer a directory, or -errno. */
int aufs_x_copy_up_dir(int root_fd, const char *path, int template_fd, char *names,
                       size_t names_len, char *value, size_t value_len)
{
    struct aufs_open_how how = {O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0,
                             AUFS_RESOLVE_IN_ROOT | AUFS_RESOLVE_NO_SYMLINKS | AUFS_RESOLVE_NO_MAGICLINKS};
    struct stat st;
    ssize_t list_len;
    const char *name;
    long lfd;
    int tfd, dfd, r = 0;

    if (!*path)
        return 0; /* the layer's root is never implied */
    do {
        lfd = syscall(SYS_openat2, template_fd, path, &how, sizeof how);
    } while (lfd < 0 && (errno == EAGAIN || errno == EINTR));
    if (lfd < 0)
        return (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) ? 0 : -errno;
    tfd = (int)lfd;
    /* the same rule on our side: a directory created through a symlink of the layer is not at
     * `path` in the union, and its lower counterpart is unknown here; it stays as it is */
    do {
        lfd = syscall(SYS_openat2, root_fd, path, &how, sizeof how);
    } while (lfd < 0 && (errno == EAGAIN || errno == EINTR));
    if (lfd < 0) {
        r = errno;
        close(tfd);
        /* replaced or removed by a later entry: it is not implied any more */
        return (r == ENOENT || r == ENOTDIR || r == ELOOP) ? 0 : -r;
    }
    dfd = (int)lfd;
    if (fstat(tfd, &st) < 0)
        r = -errno;
    else if (fchown(dfd, st.st_uid, st.st_gid) < 0)
        r = -errno;
    else if (fchmod(dfd, st.st_mode & 07777) < 0)
        r = -errno;
    if (r == 0) {
        list_len = flistxattr(tfd, names, names_len);
        if (list_len < 0)
            r = (errno == ENOTSUP) ? 0 : -errno;
        for (name = names; r == 0 && list_len > 0 && name < names + list_len;
             name += strlen(name) + 1) {
            ssize_t vlen;
            if (!*name || aufs_is_private_xattr(name))
                continue;
            vlen = fgetxattr(tfd, name, value, value_len);
            if (vlen < 0) {
                if (errno == ENODATA)
                    continue; /* removed since the listing */
                r = -errno;
            } else if (fsetxattr(dfd, name, value, (size_t)vlen, 0) < 0) {
                r = -errno;
            }
        }
    }
    close(dfd);
    close(tfd);
    return r < 0 ? r : 1;
}
