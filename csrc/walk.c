/* walk.c: reading a layer directory fast, for export (Driver.diff) and the change list.
 *
 * - aufs_w_scan: one directory's entries with their lstat fields, in one call (getdents64 +
 *   fstatat relative to the directory fd, never following a symlink).
 * - aufs_w_entry: one tar entry (header, xattrs, file data) through libarchive entry points
 *   the caller passes as addresses, so there is no link-time dependency on libarchive.
 * - aufs_w_scan_sorted + aufs_w_run: a directory's entries in tar order, written in one
 *   call until a subdirectory or a multiply-linked inode needs the caller (aufs/export.py).
 * - aufs_w_changes: the whole change list of a layer directory against a lower view
 *   (Docker's rules, see aufs/changes.py), as NUL-separated paths plus one kind byte each.
 *
 * Every directory is opened with O_DIRECTORY|O_NOFOLLOW relative to its parent's fd, so an
 * entry swapped for a symlink while a walk runs never leads it outside the tree.
 * Reentrant: all state lives in the caller's structs or in memory freed before returning.
 */
#include "aufs_native.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#define W_O_DIR (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
#define W_DENTS 32768

struct w_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static int w_is_dot(const char *name)
{
    return name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0));
}

/* ------------------------------------------------------------------ scan */

static size_t w_align8(size_t n) { return (n + 7) & ~(size_t)7; }

ssize_t aufs_w_scan(int dir_fd, int flags, char *out, size_t outlen)
{
    char *dents = malloc(W_DENTS);
    size_t used = 0;
    ssize_t rc = 0;

    if (dents == NULL)
        return -ENOMEM;
    if (lseek(dir_fd, 0, SEEK_SET) < 0) {
        free(dents);
        return -errno;
    }
    for (;;) {
        long n = syscall(SYS_getdents64, dir_fd, dents, W_DENTS);
        if (n < 0) {
            rc = -errno;
            break;
        }
        if (n == 0)
            break;
        for (long pos = 0; pos < n;) {
            struct w_dirent64 *d = (struct w_dirent64 *)(dents + pos);
            pos += d->d_reclen;
            if (w_is_dot(d->d_name))
                continue;
            size_t namelen = strlen(d->d_name);
            size_t reclen = w_align8(sizeof(struct aufs_wrec) + namelen + 1);
            if (used + reclen > outlen) {
                rc = -ENOBUFS;
                goto out;
            }
            struct aufs_wrec *r = (struct aufs_wrec *)(out + used);
            memset(r, 0, sizeof(*r));
            r->ino = d->d_ino;
            r->mode = (uint32_t)d->d_type << 12; /* DTTOIF */
            if ((flags & AUFS_W_SCAN_STAT) || d->d_type == DT_UNKNOWN || d->d_type == DT_CHR) {
                struct stat st;
                if (fstatat(dir_fd, d->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                    if (errno == ENOENT)
                        continue; /* removed since readdir: nothing to report */
                    rc = -errno;
                    goto out;
                }
                r->ino = st.st_ino;
                r->dev = st.st_dev;
                r->size = (uint64_t)st.st_size;
                r->rdev = st.st_rdev;
                r->mtime_sec = st.st_mtim.tv_sec;
                r->mtime_nsec = st.st_mtim.tv_nsec;
                r->mode = st.st_mode;
                r->uid = st.st_uid;
                r->gid = st.st_gid;
                r->nlink = (uint32_t)st.st_nlink;
            }
            r->namelen = (uint32_t)namelen;
            r->reclen = (uint32_t)reclen;
            memcpy(r + 1, d->d_name, namelen + 1);
            used += reclen;
        }
    }
out:
    free(dents);
    return rc < 0 ? rc : (ssize_t)used;
}

/* ---------------------------------------------------------------- export */

typedef void *(*w_entry_clear_t)(void *);
typedef void (*w_entry_str_t)(void *, const char *);
typedef void (*w_entry_mode_t)(void *, mode_t);
typedef void (*w_entry_i64_t)(void *, int64_t);
typedef void (*w_entry_mtime_t)(void *, time_t, long);
typedef void (*w_entry_dev_t)(void *, dev_t);
typedef void (*w_entry_xattr_t)(void *, const char *, const void *, size_t);
typedef int (*w_entry_acl_t)(void *, int, int, int, int, const char *);
typedef void (*w_entry_sparse_t)(void *, int64_t, int64_t);
typedef int (*w_entry_sparse_reset_t)(void *);
typedef int (*w_entry_sparse_next_t)(void *, int64_t *, int64_t *);

/* Regular files this large are asked for holes (one lseek); smaller ones go out dense. */
#define W_SPARSE_MIN ((int64_t)1 << 20)
/* Hole bytes handed to the pax writer per call (it skips them without reading). */
#define W_HOLE_CHUNK ((int64_t)1 << 30)
typedef int (*w_write_header_t)(void *, void *);
typedef ssize_t (*w_write_data_t)(void *, const void *, size_t);

#define W_OUT_MIN_READ 65536
#define W_XATTR_MAX 65536 /* XATTR_LIST_MAX and XATTR_SIZE_MAX */
#define W_MAX_XATTRS 1024

/* the xattrs that mark a directory opaque (aufs.whiteouts.OPAQUE_XATTRS) */
static const char *const w_opaque_xattrs[] = {
    AUFS_XATTR_TRUSTED_OVERLAY AUFS_XATTR_OPAQUE_SUFFIX,
    AUFS_XATTR_USER_OVERLAY AUFS_XATTR_OPAQUE_SUFFIX,
    AUFS_XATTR_FUSE_OVERLAY AUFS_XATTR_OPAQUE_SUFFIX,
};

static int w_is_opaque_key(const char *key)
{
    for (size_t i = 0; i < 3; i++)
        if (strcmp(key, w_opaque_xattrs[i]) == 0)
            return 1;
    return 0;
}

/* The kernel's POSIX ACL value of `key` (system.posix_acl_access or _default) also as the
 * entry's ACL, so the pax writer adds the SCHILY.acl.* text that GNU tar --acls, bsdtar --acls
 * and star read (the xattr stays too: Go-based tools read that one). Ids are numeric, as for
 * owners. libarchive's convention follows: the header's group bits become group::, and
 * readers take them from mask:: when they set the ACL. A value that does not parse adds
 * nothing. */
static void w_acl(struct aufs_wctx *ctx, const char *key, const unsigned char *value, size_t len)
{
    int type;
    uint32_t version;
    if (strcmp(key, "system.posix_acl_access") == 0)
        type = 0x100; /* ARCHIVE_ENTRY_ACL_TYPE_ACCESS */
    else if (strcmp(key, "system.posix_acl_default") == 0)
        type = 0x200; /* ARCHIVE_ENTRY_ACL_TYPE_DEFAULT */
    else
        return;
    if (len < 4 || (len - 4) % 8 != 0)
        return;
    memcpy(&version, value, 4);
    if (version != 2)
        return;
    for (size_t off = 4; off < len; off += 8) {
        uint16_t ktag, perm;
        uint32_t id;
        int tag, qual = -1;
        memcpy(&ktag, value + off, 2);
        memcpy(&perm, value + off + 2, 2);
        memcpy(&id, value + off + 4, 4);
        switch (ktag) { /* archive_entry.h's ARCHIVE_ENTRY_ACL_* tags */
        case 0x01: tag = 10002; break;
        case 0x02: tag = 10001; qual = (int)id; break;
        case 0x04: tag = 10004; break;
        case 0x08: tag = 10003; qual = (int)id; break;
        case 0x10: tag = 10005; break;
        case 0x20: tag = 10006; break;
        default: continue;
        }
        ((w_entry_acl_t)ctx->api->entry_acl_add_entry)(ctx->entry, type, perm & 7, tag, qual, NULL);
    }
}

/* Adds the xattrs of fd (or of path, not followed) to the entry, sorted by name, leaving the
 * union filesystem's own out. Returns 1 if an opaque xattr is "y", 0, or -errno. */
static int w_xattrs(struct aufs_wctx *ctx, int fd, const char *path)
{
    char *list = ctx->buf, *value = ctx->buf + W_XATTR_MAX;
    const char *keys[W_MAX_XATTRS]; /* the names in the tar */
    const char *raw[W_MAX_XATTRS];  /* the names on disk */
    size_t nkeys = 0;
    int opaque = 0;
    int rootless = ctx->flags & AUFS_W_ROOTLESS;
    ssize_t len = fd >= 0 ? flistxattr(fd, list, W_XATTR_MAX) : llistxattr(path, list, W_XATTR_MAX);

    if (len < 0)
        return (errno == ENOTSUP || errno == EOPNOTSUPP) ? 0 : -errno;
    for (ssize_t pos = 0; pos < len; pos += (ssize_t)strlen(list + pos) + 1) {
        const char *key = list + pos;
        if (rootless) {
            /* what a rootless extraction recorded is metadata, not an xattr of the image */
            if (strcmp(key, AUFS_ROOTLESS_OVERRIDE) == 0 ||
                strncmp(key, AUFS_ROOTLESS_LINK_OWNER, AUFS_ROOTLESS_LINK_OWNER_LEN) == 0)
                continue;
            if (strncmp(key, AUFS_ROOTLESS_XATTR_PREFIX, AUFS_ROOTLESS_XATTR_PREFIX_LEN) == 0)
                key += AUFS_ROOTLESS_XATTR_PREFIX_LEN;
        }
        if (nkeys == W_MAX_XATTRS)
            return -E2BIG;
        /* insertion sort: entries hold a handful of xattrs */
        size_t i = nkeys++;
        while (i > 0 && strcmp(keys[i - 1], key) > 0) {
            keys[i] = keys[i - 1];
            raw[i] = raw[i - 1];
            i--;
        }
        keys[i] = key;
        raw[i] = list + pos;
    }
    for (size_t i = 0; i < nkeys; i++) {
        ssize_t vlen = fd >= 0 ? fgetxattr(fd, raw[i], value, W_XATTR_MAX)
                               : lgetxattr(path, raw[i], value, W_XATTR_MAX);
        if (vlen < 0) {
            if (errno == ENODATA) /* removed while we looked */
                continue;
            return -errno;
        }
        if (aufs_is_private_xattr(keys[i])) {
            if (w_is_opaque_key(keys[i]) && vlen == 1 && value[0] == 'y')
                opaque = 1;
            continue;
        }
        ((w_entry_xattr_t)ctx->api->entry_xattr_add_entry)(ctx->entry, keys[i], value,
                                                          (size_t)vlen);
        if (strncmp(keys[i], "system.posix_acl_", 17) == 0)
            w_acl(ctx, keys[i], (const unsigned char *)value, (size_t)vlen);
    }
    return opaque;
}

static int w_header(struct aufs_wctx *ctx)
{
    int rc = ((w_write_header_t)ctx->api->write_header)(ctx->archive, ctx->entry);
    /* ARCHIVE_WARN: pax stored a name that is not valid in the locale's charset as binary */
    if (rc != AUFS_ARCHIVE_OK && rc != AUFS_ARCHIVE_WARN) {
        ctx->archive_status = rc;
        return AUFS_W_ARCHIVE;
    }
    return 0;
}

/* Copies exactly size bytes of fd (libarchive pads if the file shrank meanwhile). With an
 * aufs_wout output the data is read into its buffer where the next output byte goes; the
 * pax writer hands a regular entry's data to the output unchanged (same pointer, no
 * sparse map: we never declare sparse entries), so aufs_w_out_write only counts it. */
static int w_data(struct aufs_wctx *ctx, int fd, int64_t size);

/* Declares the data regions of a file with holes (SEEK_DATA/SEEK_HOLE) as the entry's sparse
 * map, so the pax writer stores it as a GNU sparse 1.0 entry (read by GNU tar, bsdtar and Go):
 * the tar costs the file's data, not its size. A file that is one hole gets the single empty
 * region at its end GNU tar writes. Returns the number of regions, or -errno. */
static int64_t w_sparse_map(struct aufs_wctx *ctx, int fd, int64_t size)
{
    w_entry_sparse_t add = (w_entry_sparse_t)ctx->api->entry_sparse_add_entry;
    int64_t off = 0, n = 0;
    while (off < size) {
        off_t data = lseek(fd, (off_t)off, SEEK_DATA);
        off_t hole;
        if (data < 0) {
            if (errno == ENXIO)
                break; /* only a hole from off to the end */
            return -errno;
        }
        if ((int64_t)data >= size)
            break;
        hole = lseek(fd, data, SEEK_HOLE);
        if (hole < 0)
            return -errno;
        if ((int64_t)hole > size)
            hole = (off_t)size;
        add(ctx->entry, (int64_t)data, (int64_t)(hole - data));
        n++;
        off = (int64_t)hole;
    }
    if (n == 0) {
        add(ctx->entry, size, 0);
        n = 1;
    }
    return n;
}

/* Feeds `len` hole bytes to the pax writer, which only counts them off its sparse map (the
 * map was made by w_sparse_map, so they are exactly a hole of it and never read). */
static int w_hole(struct aufs_wctx *ctx, int64_t len)
{
    w_write_data_t write_data = (w_write_data_t)ctx->api->write_data;
    while (len > 0) {
        size_t n = (size_t)(len < W_HOLE_CHUNK ? len : W_HOLE_CHUNK);
        ssize_t w = write_data(ctx->archive, ctx->buf, n);
        if (w < 0 || (size_t)w != n) {
            ctx->archive_status = w < 0 ? (int)w : AUFS_ARCHIVE_FATAL;
            return AUFS_W_ARCHIVE;
        }
        len -= (int64_t)n;
    }
    return 0;
}

/* Feeds exactly `len` bytes of fd from `off` (zeros where the file has shrunk meanwhile: the
 * writer's sparse map is fixed by now) through ctx->buf. */
static int w_region(struct aufs_wctx *ctx, int fd, int64_t off, int64_t len)
{
    w_write_data_t write_data = (w_write_data_t)ctx->api->write_data;
    while (len > 0) {
        size_t want = (size_t)(len < (int64_t)ctx->buflen ? len : (int64_t)ctx->buflen);
        ssize_t n = pread(fd, ctx->buf, want, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0) {
            memset(ctx->buf, 0, want);
            n = (ssize_t)want;
        }
        ssize_t w = write_data(ctx->archive, ctx->buf, (size_t)n);
        if (w < 0 || w != n) {
            ctx->archive_status = w < 0 ? (int)w : AUFS_ARCHIVE_FATAL;
            return AUFS_W_ARCHIVE;
        }
        off += n;
        len -= n;
    }
    return 0;
}

/* A sparse entry's data, region by region of the map the entry declares (the pax writer's
 * own: the file may have changed since, the map may not): holes counted off, data read. */
static int w_sparse_data(struct aufs_wctx *ctx, int fd, int64_t size)
{
    w_write_data_t write_data = (w_write_data_t)ctx->api->write_data;
    int64_t pos = 0, off, len;
    int rc;
    /* the writer puts the sparse map out on its first data call: make that call now, so no
     * file data sits in the output buffer that the map would be copied over */
    if (write_data(ctx->archive, ctx->buf, 0) < 0) {
        ctx->archive_status = AUFS_ARCHIVE_FATAL;
        return AUFS_W_ARCHIVE;
    }
    ((w_entry_sparse_reset_t)ctx->api->entry_sparse_reset)(ctx->entry);
    while (((w_entry_sparse_next_t)ctx->api->entry_sparse_next)(ctx->entry, &off, &len) == AUFS_ARCHIVE_OK) {
        if (off < pos || len < 0 || off > size - len)
            return -EINVAL; /* not a map w_sparse_map makes */
        rc = w_hole(ctx, off - pos);
        if (rc == 0)
            rc = w_region(ctx, fd, off, len);
        if (rc != 0)
            return rc;
        pos = off + len;
    }
    return w_hole(ctx, size - pos);
}

static int w_data(struct aufs_wctx *ctx, int fd, int64_t size)
{
    w_write_data_t write_data = (w_write_data_t)ctx->api->write_data;
    struct aufs_wout *out = ctx->out;
    uint64_t left = (uint64_t)size;

    while (left > 0) {
        char *dst = ctx->buf;
        size_t room = ctx->buflen;
        if (out != NULL) {
            room = out->cap - out->used;
            /* a nearly full buffer is written out rather than read into in small pieces */
            if (room < left && room < W_OUT_MIN_READ) {
                if (aufs_w_out_flush(out) < 0) {
                    ctx->archive_status = AUFS_ARCHIVE_FATAL;
                    return AUFS_W_ARCHIVE;
                }
                room = out->cap;
            }
            dst = out->buf + out->used;
        }
        size_t want = left < room ? (size_t)left : room;
        ssize_t n = read(fd, dst, want);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        ssize_t w = write_data(ctx->archive, dst, (size_t)n);
        if (w < 0) {
            ctx->archive_status = (int)w;
            return AUFS_W_ARCHIVE;
        }
        left -= (uint64_t)n;
    }
    return 0;
}

int aufs_w_out_flush(struct aufs_wout *out)
{
    size_t done = 0;

    while (done < out->used) {
        ssize_t n = write(out->fd, out->buf + done, out->used - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            out->err = errno;
            memmove(out->buf, out->buf + done, out->used - done);
            out->used -= done;
            return -out->err;
        }
        done += (size_t)n;
    }
    out->used = 0;
    return 0;
}

/* libarchive's write callback (archive_write_callback) for an aufs_wout: -1 with out->err
 * set when the fd refuses the bytes (libarchive then fails the call that wrote them). */
ssize_t aufs_w_out_write(void *archive, void *client, const void *buff, size_t len)
{
    struct aufs_wout *out = client;
    const char *data = buff;
    size_t whole = len;

    (void)archive;
    if (data == out->buf + out->used && len <= out->cap - out->used) {
        out->used += len; /* file data that w_data read in place */
        out->total += (int64_t)len;
        return (ssize_t)len;
    }
    if (len > out->cap - out->used) {
        if (aufs_w_out_flush(out) < 0)
            return -1;
        while (len >= out->cap) { /* nothing gained by copying a large piece */
            ssize_t n = write(out->fd, data, len);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                out->err = errno;
                return -1;
            }
            data += n;
            len -= (size_t)n;
            out->total += n;
        }
    }
    memcpy(out->buf + out->used, data, len);
    out->used += len;
    out->total += (int64_t)len;
    return (ssize_t)whole;
}

/* Ends the output as libarchive's own block writer would with bytes_per_block = block and
 * bytes_in_last_block = last_block: the last (partial) block is padded with zeros to a
 * multiple of last_block, at most block. Then writes out what is buffered. */
int aufs_w_out_close(struct aufs_wout *out, size_t block, size_t last_block)
{
    size_t rem = block ? (size_t)(out->total % (int64_t)block) : 0;

    if (rem && last_block) {
        size_t target = (rem + last_block - 1) / last_block * last_block;
        size_t pad = (target < block ? target : block) - rem;
        if (pad > out->cap - out->used && aufs_w_out_flush(out) < 0)
            return -out->err;
        if (pad > out->cap)
            return -EINVAL;
        memset(out->buf + out->used, 0, pad);
        out->used += pad;
        out->total += (int64_t)pad;
    }
    return aufs_w_out_flush(out);
}

/* True if the symlink `name` in `dir_fd` points at `target` (a rootless link-owner record
 * names the target it was made for; records of older stores name none). */
static int w_link_is(int dir_fd, const char *name, const char *target)
{
    char now[4097];
    ssize_t n = readlinkat(dir_fd, name, now, sizeof now - 1);
    if (n < 0)
        return 0;
    now[n] = 0;
    return strcmp(now, target) == 0;
}

/* Rootless: the entry as the image has it. A file or directory with the override xattr
 * gets its owner, mode and type from it (a device or fifo is stored as an empty file); any
 * other entry the store's owner owns is root's. Returns 0 or -errno. */
static int w_rootless(struct aufs_wctx *ctx, int dir_fd, int fd, const char *name,
                      unsigned int *mode, int64_t *uid, int64_t *gid, int64_t *size, uint64_t *rdev)
{
    char value[128 + 4096], path[64 + 256];
    long long u, g;
    unsigned int perm, maj, min;
    int used = 0;
    ssize_t n = -1;

    if (S_ISREG(*mode) || S_ISDIR(*mode)) {
        if (fd >= 0) {
            n = fgetxattr(fd, AUFS_ROOTLESS_OVERRIDE, value, sizeof value - 1);
        } else if (dir_fd >= 0) {
            if (snprintf(path, sizeof path, "/proc/self/fd/%d/%s", dir_fd, name) >= (int)sizeof path)
                return -ENAMETOOLONG;
            n = lgetxattr(path, AUFS_ROOTLESS_OVERRIDE, value, sizeof value - 1);
        }
        if (n < 0 && (fd >= 0 || dir_fd >= 0) && errno != ENODATA && errno != ENOTSUP)
            return -errno;
    }
    if (S_ISLNK(*mode) && dir_fd >= 0) {
        /* recorded on the directory (a symlink can carry no user.* xattr) */
        char key[256];
        if (snprintf(key, sizeof key, AUFS_ROOTLESS_LINK_OWNER "%s", name) < (int)sizeof key) {
            n = fgetxattr(dir_fd, key, value, sizeof value - 1);
            if (n < 0 && errno != ENODATA && errno != ENOTSUP)
                return -errno;
            if (n >= 0) {
                value[n] = 0;
                if (sscanf(value, "%lld:%lld%n", &u, &g, &used) != 2 || u < 0 || g < 0 ||
                    u > 0xffffffffLL || g > 0xffffffffLL)
                    return -EBADMSG;
                if (value[used] == ':' && !w_link_is(dir_fd, name, value + used + 1))
                    n = -1; /* another symlink took the name since: the store owner's */
                else {
                    *uid = u;
                    *gid = g;
                    return 0;
                }
            }
        }
    }
    if (n < 0) {
        if ((uint32_t)*uid == ctx->own_uid)
            *uid = 0;
        if ((uint32_t)*gid == ctx->own_gid)
            *gid = 0;
        return 0;
    }
    value[n] = 0;
    if (sscanf(value, "%lld:%lld:%o:%n", &u, &g, &perm, &used) < 3 || u < 0 || g < 0 ||
        u > 0xffffffffLL || g > 0xffffffffLL)
        return -EBADMSG;
    *uid = u;
    *gid = g;
    const char *type = used > 0 ? value + used : (S_ISDIR(*mode) ? "dir" : "file");
    unsigned int fmt = *mode & S_IFMT;
    if (strcmp(type, "pipe") == 0) {
        fmt = S_IFIFO;
    } else if (sscanf(type, "char-%u-%u", &maj, &min) == 2) {
        fmt = S_IFCHR;
        *rdev = makedev(maj, min);
    } else if (sscanf(type, "block-%u-%u", &maj, &min) == 2) {
        fmt = S_IFBLK;
        *rdev = makedev(maj, min);
    }
    if (fmt != (*mode & S_IFMT))
        *size = 0;
    *mode = fmt | (perm & 07777);
    return 0;
}

int aufs_w_entry(struct aufs_wctx *ctx, int dir_fd, int fd, const char *name,
                 const char *tar_name, const char *hardlink, unsigned int mode, int64_t uid,
                 int64_t gid, int64_t mtime, int64_t size, uint64_t rdev)
{
    const struct aufs_wapi *api = ctx->api;
    void *e = ctx->entry;
    int rc, opaque = 0;

    if (ctx->buflen < 2 * W_XATTR_MAX)
        return -EINVAL;
    if ((ctx->flags & AUFS_W_ROOTLESS) && name != NULL) {
        rc = w_rootless(ctx, dir_fd, fd, name, &mode, &uid, &gid, &size, &rdev);
        if (rc < 0)
            return rc;
    }
    ((w_entry_clear_t)api->entry_clear)(e);
    ((w_entry_str_t)api->entry_copy_pathname)(e, tar_name);
    ((w_entry_mode_t)api->entry_set_mode)(e, (mode_t)mode);
    if (uid)
        ((w_entry_i64_t)api->entry_set_uid)(e, uid);
    if (gid)
        ((w_entry_i64_t)api->entry_set_gid)(e, gid);
    ((w_entry_mtime_t)api->entry_set_mtime)(e, (time_t)mtime, 0);
    if (name == NULL) { /* a whiteout or opaque marker: no inode behind it */
        ((w_entry_i64_t)api->entry_set_size)(e, 0);
        return w_header(ctx);
    }
    if (hardlink != NULL) { /* the inode's data and xattrs went with its first name */
        ((w_entry_str_t)api->entry_copy_hardlink)(e, hardlink);
        ((w_entry_i64_t)api->entry_set_size)(e, 0);
        return w_header(ctx);
    }
    if (S_ISREG(mode)) {
        /* O_NONBLOCK: a file swapped for a fifo meanwhile must not hang the export */
        int file = openat(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (file < 0)
            return -errno;
        rc = w_xattrs(ctx, file, NULL);
        if (rc >= 0) {
            int sparse = 0;
            ((w_entry_i64_t)api->entry_set_size)(e, size);
            if (size >= W_SPARSE_MIN) {
                off_t hole = lseek(file, 0, SEEK_HOLE);
                /* SEEK_HOLE moved the offset that w_data reads from */
                if (lseek(file, 0, SEEK_SET) < 0)
                    rc = -errno;
                else if (hole >= 0 && (int64_t)hole < size) {
                    int64_t n = w_sparse_map(ctx, file, size);
                    if (n < 0)
                        rc = (int)n;
                    sparse = 1;
                }
            }
            if (rc >= 0)
                rc = w_header(ctx);
            if (rc == 0 && size > 0)
                rc = sparse ? w_sparse_data(ctx, file, size) : w_data(ctx, file, size);
        }
        close(file);
        return rc;
    }
    if (S_ISDIR(mode)) {
        opaque = rc = w_xattrs(ctx, fd, NULL);
    } else {
        /* no fd can be opened on these: their xattrs are read through the directory fd */
        char path[64 + 256];
        if (snprintf(path, sizeof(path), "/proc/self/fd/%d/%s", dir_fd, name) >= (int)sizeof(path))
            return -ENAMETOOLONG;
        rc = w_xattrs(ctx, -1, path);
    }
    if (rc < 0)
        return rc;
    ((w_entry_i64_t)api->entry_set_size)(e, 0);
    if (S_ISLNK(mode)) {
        /* the value buffer half of ctx->buf is free again once the xattrs are added */
        char *target = ctx->buf;
        ssize_t n = readlinkat(dir_fd, name, target, ctx->buflen - 1);
        if (n < 0)
            return -errno;
        target[n] = 0;
        ((w_entry_str_t)api->entry_copy_symlink)(e, target);
    } else if (S_ISCHR(mode) || S_ISBLK(mode)) {
        ((w_entry_dev_t)api->entry_set_rdevmajor)(e, major(rdev));
        ((w_entry_dev_t)api->entry_set_rdevminor)(e, minor(rdev));
    }
    rc = w_header(ctx);
    return rc ? rc : opaque;
}

/* --------------------------------------------------------------- changes */

#define W_PATH_MAX 65536
#define W_MAX_OPEN 64 /* frames that keep their directory fds open; deeper ones reopen */

enum { W_CONTENT, W_WHITEOUT, W_SKIP };

struct w_ent {
    size_t name;   /* offset in the directory's names */
    size_t target; /* offset of a whiteout's target (the name, or the name after ".wh.") */
    uint32_t mode; /* S_IFMT bits only, unless a stat was needed */
    int kind;
};

/* One directory's entries, read whole. */
struct w_dir {
    char *names;
    size_t used, cap;
    struct w_ent *ents;
    size_t n, ncap;
};

/* A directory to descend into, named in its parent's w_dir. */
struct w_child {
    const char *name;
    int has_lower;  /* exists below as a directory: compare with it */
    int forced;     /* its parent also holds a whiteout of the same name */
    int emitted;    /* already listed (ADD, or MODIFY of a directory replacing a file) */
};

struct w_frame {
    int fd, lower_fd;     /* -1 while closed (or for lower_fd: when has_lower is 0) */
    int has_lower;
    int emitted;
    int forced;
    size_t path_len;      /* its change path is out path[0:path_len] */
    const char *name;     /* in the parent's w_dir */
    struct w_dir dir;
    struct w_child *children;
    size_t nchildren, next_child;
};

struct w_out {
    char *paths;
    size_t paths_len, paths_used;
    unsigned char *kinds;
    size_t kinds_len, count;
    char *path; /* the current change path, W_PATH_MAX bytes */
};

static void w_dir_free(struct w_dir *d)
{
    free(d->names);
    free(d->ents);
    memset(d, 0, sizeof(*d));
}

static int w_dir_add(struct w_dir *d, const char *name, uint32_t mode, int kind)
{
    size_t len = strlen(name) + 1;
    if (d->used + len > d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4096;
        while (cap < d->used + len)
            cap *= 2;
        char *p = realloc(d->names, cap);
        if (p == NULL)
            return -ENOMEM;
        d->names = p;
        d->cap = cap;
    }
    if (d->n == d->ncap) {
        size_t cap = d->ncap ? d->ncap * 2 : 64;
        struct w_ent *p = realloc(d->ents, cap * sizeof(*p));
        if (p == NULL)
            return -ENOMEM;
        d->ents = p;
        d->ncap = cap;
    }
    struct w_ent *e = &d->ents[d->n++];
    e->name = d->used;
    e->target = d->used + (kind == W_WHITEOUT && strncmp(name, AUFS_WHITEOUT_PREFIX, AUFS_WHITEOUT_PREFIX_LEN) == 0 ? AUFS_WHITEOUT_PREFIX_LEN : 0);
    e->mode = mode;
    e->kind = kind;
    memcpy(d->names + d->used, name, len);
    d->used += len;
    return 0;
}

/* The meaning of a layer entry (aufs.whiteouts.classify): both formats accept both kinds of
 * whiteout, so the format does not matter here. */
static int w_classify(const char *name, uint32_t mode, uint64_t rdev)
{
    if (strncmp(name, AUFS_WHITEOUT_PREFIX, AUFS_WHITEOUT_PREFIX_LEN) == 0) {
        const char *target = name + AUFS_WHITEOUT_PREFIX_LEN;
        if (strncmp(name, AUFS_META_PREFIX, AUFS_META_PREFIX_LEN) == 0) /* metadata, or the opaque marker */
            return W_SKIP;
        if (target[0] == 0 || w_is_dot(target) || !S_ISREG(mode))
            return W_SKIP;
        return W_WHITEOUT;
    }
    if (S_ISCHR(mode) && rdev == 0)
        return W_WHITEOUT;
    return W_CONTENT;
}

/* Reads the directory fd. Layer mode (lower == 0): classifies entries, and reports a regular
 * ".wh..wh..opq" in *marker. Lower mode: keeps only names a lookup would find (no ".wh."
 * names, no whiteout devices, nothing that vanished). */
static int w_read_dir(int fd, int lower, struct w_dir *d, int *marker)
{
    char dents[16384];
    for (;;) {
        long n = syscall(SYS_getdents64, fd, dents, sizeof(dents));
        if (n < 0)
            return -errno;
        if (n == 0)
            return 0;
        for (long pos = 0; pos < n;) {
            struct w_dirent64 *de = (struct w_dirent64 *)(dents + pos);
            pos += de->d_reclen;
            if (w_is_dot(de->d_name))
                continue;
            uint32_t mode = (uint32_t)de->d_type << 12;
            uint64_t rdev = 1;
            if (lower && strncmp(de->d_name, AUFS_WHITEOUT_PREFIX, AUFS_WHITEOUT_PREFIX_LEN) == 0)
                continue; /* markers of a plain diff dir used as the view */
            if (de->d_type != DT_DIR && de->d_type != DT_REG && de->d_type != DT_LNK) {
                struct stat st;
                if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                    if (errno == ENOENT)
                        continue; /* removed since readdir, or a lower whiteout overlayfs lists */
                    return -errno;
                }
                mode = st.st_mode;
                rdev = st.st_rdev;
            }
            int kind;
            if (lower) {
                if (S_ISCHR(mode) && rdev == 0)
                    continue;
                kind = W_CONTENT;
            } else {
                kind = w_classify(de->d_name, mode, rdev);
                if (strcmp(de->d_name, AUFS_OPAQUE_NAME) == 0 && S_ISREG(mode))
                    *marker = 1;
                if (kind == W_SKIP)
                    continue;
            }
            int rc = w_dir_add(d, de->d_name, mode, kind);
            if (rc < 0)
                return rc;
        }
    }
}

static int w_emit(struct w_out *out, size_t path_len, const char *name, int kind)
{
    size_t len = path_len, nlen = name ? strlen(name) : 0;
    if (name) {
        if (path_len + 1 + nlen + 1 > W_PATH_MAX)
            return -ENAMETOOLONG;
        out->path[path_len] = '/';
        memcpy(out->path + path_len + 1, name, nlen);
        len += 1 + nlen;
    }
    if (out->paths_used + len + 1 > out->paths_len || out->count == out->kinds_len)
        return -ENOBUFS;
    memcpy(out->paths + out->paths_used, out->path, len);
    out->paths[out->paths_used + len] = 0;
    out->paths_used += len + 1;
    out->kinds[out->count++] = (unsigned char)kind;
    return 0;
}

/* a name and its mode, sorted by name (the name first, so w_cmp_str compares these too) */
struct w_named {
    const char *name;
    uint32_t mode;
};

#define W_SCAN_LOWER_AT 16 /* layer entries from which the lower directory is read whole */

static int w_cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int w_has_opaque_xattr(int fd)
{
    for (size_t i = 0; i < 3; i++) {
        char value[2];
        ssize_t n = fgetxattr(fd, w_opaque_xattrs[i], value, sizeof(value));
        if (n < 0) {
            if (errno == ENODATA || errno == ENOTSUP || errno == EOPNOTSUPP || errno == ERANGE)
                continue;
            return -errno;
        }
        if (n == 1 && value[0] == 'y')
            return 1;
    }
    return 0;
}

static int w_same_time(const struct timespec *a, const struct timespec *b)
{
    if (a->tv_sec != b->tv_sec)
        return 0;
    return a->tv_nsec == b->tv_nsec || a->tv_nsec == 0 || b->tv_nsec == 0;
}

/* Rule 3 of aufs/changes.py: same mode, owner and mtime as the directory below. */
static int w_same_dir(int fd, int lower_fd)
{
    struct stat up, low;
    if (fstat(fd, &up) < 0 || fstat(lower_fd, &low) < 0)
        return -errno;
    if (!(S_ISDIR(low.st_mode) && up.st_mode == low.st_mode && up.st_uid == low.st_uid &&
          up.st_gid == low.st_gid && w_same_time(&up.st_mtim, &low.st_mtim)))
        return 0;
    /* a rootless store keeps the owner and mode it could not set in this xattr: a directory
     * whose record changed has changed (a root store has none: both reads find nothing) */
    char a[128], b[128];
    ssize_t na = fgetxattr(fd, AUFS_ROOTLESS_OVERRIDE, a, sizeof a);
    if (na < 0 && errno != ENODATA && errno != ENOTSUP)
        return -errno;
    ssize_t nb = fgetxattr(lower_fd, AUFS_ROOTLESS_OVERRIDE, b, sizeof b);
    if (nb < 0 && errno != ENODATA && errno != ENOTSUP)
        return -errno;
    return na == nb && (na <= 0 || memcmp(a, b, (size_t)na) == 0);
}

/* Lists every entry of one layer directory (the frame) and collects the children to walk. */
static int w_changes_dir(struct w_frame *f, int is_root, struct w_out *out)
{
    struct w_dir *d = &f->dir;
    const char **sorted = NULL, **targets = NULL;
    size_t ntargets = 0, nbelow = 0;
    struct w_dir below = {0};
    struct w_named *below_sorted = NULL;
    int marker = 0, rc, touched = 0;

    rc = w_read_dir(f->fd, 0, d, &marker);
    if (rc < 0)
        return rc;
    if (f->has_lower && !is_root) {
        int opaque = marker ? 1 : w_has_opaque_xattr(f->fd);
        if (opaque < 0)
            return opaque;
        int same = w_same_dir(f->fd, f->lower_fd);
        if (same < 0)
            return same;
        if (opaque || f->forced || !same) {
            if ((rc = w_emit(out, f->path_len, NULL, AUFS_W_MODIFY)) < 0)
                return rc;
            f->emitted = 1;
        }
        marker = opaque;
    } else if (f->has_lower) { /* the root: opaque hides the whole lower union */
        if (!marker) {
            marker = w_has_opaque_xattr(f->fd);
            if (marker < 0)
                return marker;
        }
    } else {
        marker = 0;
    }
    f->children = malloc((d->n ? d->n : 1) * sizeof(*f->children));
    targets = malloc((d->n ? d->n : 1) * sizeof(*targets));
    if (f->children == NULL || targets == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < d->n; i++)
        if (d->ents[i].kind == W_WHITEOUT)
            targets[ntargets++] = d->names + d->ents[i].target;
    if (ntargets > 1)
        qsort(targets, ntargets, sizeof(*targets), w_cmp_str);
    if (f->has_lower && d->n >= W_SCAN_LOWER_AT) {
        /* many names: one read of the lower directory answers them all, far cheaper
         * through an overlay mount than a lookup each */
        int ignored = 0;
        int own = openat(f->lower_fd, ".", W_O_DIR);
        if (own < 0) {
            rc = -errno;
            goto out;
        }
        rc = w_read_dir(own, 1, &below, &ignored);
        close(own);
        if (rc < 0)
            goto out;
        below_sorted = malloc((below.n ? below.n : 1) * sizeof(*below_sorted));
        if (below_sorted == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        for (size_t i = 0; i < below.n; i++) {
            below_sorted[i].name = below.names + below.ents[i].name;
            below_sorted[i].mode = below.ents[i].mode;
        }
        nbelow = below.n;
        qsort(below_sorted, nbelow, sizeof(*below_sorted), w_cmp_str);
    }
    for (size_t i = 0; i < d->n; i++) {
        const struct w_ent *e = &d->ents[i];
        const char *name = d->names + e->name;
        int kind, is_dir = S_ISDIR(e->mode), forced = 0, found = 0;
        if (e->kind == W_WHITEOUT) {
            touched = 1;
            continue; /* listed below, unless the directory also holds the name itself */
        }
        if (ntargets && bsearch(&name, targets, ntargets, sizeof(*targets), w_cmp_str))
            forced = 1;
        if (below_sorted != NULL) {
            const struct w_named *hit = bsearch(&name, below_sorted, nbelow,
                                                sizeof(*below_sorted), w_cmp_str);
            found = hit == NULL ? 0 : S_ISDIR(hit->mode) ? 2 : 1;
        } else if (f->has_lower) {
            struct stat st;
            if (fstatat(f->lower_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
                found = S_ISDIR(st.st_mode) ? 2 : (S_ISCHR(st.st_mode) && st.st_rdev == 0) ? 0 : 1;
            } else if (errno != ENOENT && errno != ENOTDIR) {
                rc = -errno;
                goto out;
            }
        }
        if (found == 2 && is_dir) {
            struct w_child *c = &f->children[f->nchildren++];
            c->name = name;
            c->has_lower = 1;
            c->forced = forced;
            c->emitted = 0;
            continue;
        }
        kind = found ? AUFS_W_MODIFY : AUFS_W_ADD;
        if (!found)
            touched = 1;
        if ((rc = w_emit(out, f->path_len, name, kind)) < 0)
            goto out;
        if (is_dir) {
            struct w_child *c = &f->children[f->nchildren++];
            c->name = name;
            c->has_lower = 0;
            c->forced = 0;
            c->emitted = 1;
        }
    }
    /* a whiteout is a DELETE unless this directory also holds the name (that entry wins) */
    if (ntargets) {
        size_t ncontent = 0;
        sorted = malloc(d->n * sizeof(*sorted));
        if (sorted == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        for (size_t i = 0; i < d->n; i++)
            if (d->ents[i].kind == W_CONTENT)
                sorted[ncontent++] = d->names + d->ents[i].name;
        qsort(sorted, ncontent, sizeof(*sorted), w_cmp_str);
        for (size_t i = 0; i < ntargets; i++) {
            if (i > 0 && strcmp(targets[i - 1], targets[i]) == 0)
                continue;
            if (bsearch(&targets[i], sorted, ncontent, sizeof(*sorted), w_cmp_str))
                continue;
            if ((rc = w_emit(out, f->path_len, targets[i], AUFS_W_DELETE)) < 0)
                goto out;
        }
        free(sorted);
        sorted = NULL;
    }
    if (marker && f->has_lower) {
        /* rule 5: every name below that this directory does not provide again is a DELETE */
        struct w_dir low = {0};
        int ignored = 0;
        sorted = malloc((d->n ? d->n : 1) * sizeof(*sorted));
        if (sorted == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        for (size_t i = 0; i < d->n; i++)
            sorted[i] = d->names + d->ents[i].target;
        qsort(sorted, d->n, sizeof(*sorted), w_cmp_str);
        /* a description of our own: getdents moves the offset */
        int own = openat(f->lower_fd, ".", W_O_DIR);
        if (own < 0) {
            rc = -errno;
            goto out;
        }
        rc = w_read_dir(own, 1, &low, &ignored);
        close(own);
        for (size_t i = 0; rc >= 0 && i < low.n; i++) {
            const char *name = low.names + low.ents[i].name;
            if (!bsearch(&name, sorted, d->n, sizeof(*sorted), w_cmp_str))
                rc = w_emit(out, f->path_len, name, AUFS_W_DELETE);
        }
        w_dir_free(&low);
        if (rc < 0)
            goto out;
    }
    /* rule 4: a directory that directly holds an ADD or a DELETE is listed */
    if (touched && !is_root && !f->emitted) {
        if ((rc = w_emit(out, f->path_len, NULL, AUFS_W_MODIFY)) < 0)
            goto out;
        f->emitted = 1;
    }
    rc = 0;
out:
    free(sorted);
    free(targets);
    free(below_sorted);
    w_dir_free(&below);
    return rc;
}

/* An fd on frames[k]'s directory (lower: its lower directory), reopening closed ones from
 * the nearest open ancestor one O_NOFOLLOW component at a time. */
static int w_frame_fd(struct w_frame *frames, size_t k, int lower)
{
    size_t i = k;
    int fd;
#define W_FD(j) (lower ? frames[j].lower_fd : frames[j].fd)
    while (W_FD(i) < 0)
        i--;
    fd = W_FD(i);
    for (size_t j = i + 1; j <= k; j++) {
        int next = openat(fd, frames[j].name, W_O_DIR);
        int err = errno;
        if (j - 1 > i)
            close(fd);
        if (next < 0)
            return -err;
        fd = next;
    }
    if (k > i) {
        if (lower)
            frames[k].lower_fd = fd;
        else
            frames[k].fd = fd;
    }
    return fd;
#undef W_FD
}

static void w_frame_close(struct w_frame *f)
{
    if (f->fd >= 0)
        close(f->fd);
    if (f->lower_fd >= 0)
        close(f->lower_fd);
    f->fd = f->lower_fd = -1;
}

ssize_t aufs_w_changes(int layer_fd, int lower_fd, char *paths, size_t paths_len,
                       size_t *paths_used, unsigned char *kinds, size_t kinds_len)
{
    struct w_out out = {paths, paths_len, 0, kinds, kinds_len, 0, NULL};
    struct w_frame *frames = NULL;
    size_t depth = 0, cap = 0;
    ssize_t rc = 0;

    out.path = malloc(W_PATH_MAX);
    if (out.path == NULL)
        return -ENOMEM;
    cap = 64;
    frames = calloc(cap, sizeof(*frames));
    if (frames == NULL) {
        free(out.path);
        return -ENOMEM;
    }
    frames[0].fd = openat(layer_fd, ".", W_O_DIR); /* our own offset for getdents */
    frames[0].lower_fd = lower_fd;
    frames[0].has_lower = lower_fd >= 0;
    frames[0].emitted = 1;
    if (frames[0].fd < 0) {
        rc = -errno;
        goto out;
    }
    depth = 1;
    if ((rc = w_changes_dir(&frames[0], 1, &out)) < 0)
        goto out;
    while (depth > 0) {
        size_t k = depth - 1;
        struct w_frame *f = &frames[k];
        if (f->next_child == f->nchildren) {
            w_dir_free(&f->dir);
            free(f->children);
            if (k > 0)
                w_frame_close(f);
            depth--;
            continue;
        }
        struct w_child *c = &f->children[f->next_child++];
        size_t nlen = strlen(c->name);
        if (f->path_len + 1 + nlen + 1 > W_PATH_MAX) {
            rc = -ENAMETOOLONG;
            goto out;
        }
        int parent_fd = w_frame_fd(frames, k, 0);
        if (parent_fd < 0) {
            rc = parent_fd;
            goto out;
        }
        int fd = openat(parent_fd, c->name, W_O_DIR);
        if (fd < 0) {
            if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP)
                continue; /* removed or swapped since readdir: nothing of it to list */
            rc = -errno;
            goto out;
        }
        int child_lower = -1, has_lower = c->has_lower;
        if (has_lower) {
            int lower_parent = w_frame_fd(frames, k, 1);
            child_lower = lower_parent < 0 ? -1 : openat(lower_parent, c->name, W_O_DIR);
            if (child_lower < 0) {
                int err = lower_parent < 0 ? -lower_parent : errno;
                if (err != ENOENT && err != ENOTDIR && err != ELOOP) {
                    close(fd);
                    rc = -err;
                    goto out;
                }
                has_lower = 0; /* gone from below since the lookup: its content is new */
            }
        }
        if (depth == cap) {
            struct w_frame *p = realloc(frames, 2 * cap * sizeof(*frames));
            if (p == NULL) {
                close(fd);
                if (child_lower >= 0)
                    close(child_lower);
                rc = -ENOMEM;
                goto out;
            }
            frames = p;
            cap *= 2;
            f = &frames[k];
            c = &f->children[f->next_child - 1];
        }
        struct w_frame *n = &frames[depth];
        memset(n, 0, sizeof(*n));
        n->fd = fd;
        n->lower_fd = child_lower;
        n->has_lower = has_lower;
        n->emitted = c->emitted;
        n->forced = c->forced;
        n->name = c->name;
        out.path[f->path_len] = '/';
        memcpy(out.path + f->path_len + 1, c->name, nlen);
        n->path_len = f->path_len + 1 + nlen;
        depth++;
        if (depth > W_MAX_OPEN && depth - 1 - W_MAX_OPEN > 0)
            w_frame_close(&frames[depth - 1 - W_MAX_OPEN]);
        if ((rc = w_changes_dir(n, 0, &out)) < 0)
            goto out;
    }
    rc = (ssize_t)out.count;
    *paths_used = out.paths_used;
out:
    for (size_t k = 0; k < depth; k++) {
        w_dir_free(&frames[k].dir);
        free(frames[k].children);
        if (k > 0)
            w_frame_close(&frames[k]);
    }
    if (frames[0].fd >= 0)
        close(frames[0].fd);
    free(frames);
    free(out.path);
    return rc;
}

/* ------------------------------------------------------- export, per directory */

/* The name an entry has in the tar, after its directory's prefix: a 0/0 device is written
 * as the OCI whiteout ".wh.NAME". */
static int w_tar_cmp(const void *a, const void *b)
{
    const struct aufs_wrec *ra = *(const struct aufs_wrec *const *)a;
    const struct aufs_wrec *rb = *(const struct aufs_wrec *const *)b;
    const unsigned char *pa = (const unsigned char *)AUFS_WHITEOUT_PREFIX, *pb = pa;
    const unsigned char *na = (const unsigned char *)(ra + 1), *nb = (const unsigned char *)(rb + 1);
    size_t la = ra->kind == AUFS_W_K_WHITEOUT_DEVICE ? AUFS_WHITEOUT_PREFIX_LEN : 0;
    size_t lb = rb->kind == AUFS_W_K_WHITEOUT_DEVICE ? AUFS_WHITEOUT_PREFIX_LEN : 0;
    /* compare the virtual strings pa[0:la] + na and pb[0:lb] + nb as bytes */
    for (size_t i = 0;; i++) {
        unsigned char ca = i < la ? pa[i] : na[i - la];
        unsigned char cb = i < lb ? pb[i] : nb[i - lb];
        if (ca != cb || ca == 0)
            return (int)ca - (int)cb;
    }
}

/* Export's classification of a layer entry (aufs.whiteouts.classify, sockets left out):
 * AUFS_W_K_*, or -1 to leave it out; *marker is set for a regular ".wh..wh..opq". */
static int w_export_kind(const struct aufs_wrec *r, int *marker)
{
    const char *name = (const char *)(r + 1);
    if (strncmp(name, AUFS_WHITEOUT_PREFIX, AUFS_WHITEOUT_PREFIX_LEN) == 0) {
        if (strcmp(name, AUFS_OPAQUE_NAME) == 0 && S_ISREG(r->mode))
            *marker = 1;
        if (w_classify(name, r->mode, r->rdev) != W_WHITEOUT || strchr(name + AUFS_WHITEOUT_PREFIX_LEN, '/'))
            return -1;
        return AUFS_W_K_WHITEOUT_FILE;
    }
    if (S_ISCHR(r->mode) && r->rdev == 0)
        return AUFS_W_K_WHITEOUT_DEVICE;
    if (S_ISSOCK(r->mode))
        return -1; /* sockets cannot be archived (tar skips them too) */
    return AUFS_W_K_CONTENT;
}

ssize_t aufs_w_scan_sorted(int dir_fd, char *out, size_t outlen, uint32_t *order,
                           size_t order_len, int *flags, size_t *used_out)
{
    ssize_t used = aufs_w_scan(dir_fd, AUFS_W_SCAN_STAT, out, outlen);
    const struct aufs_wrec **sorted;
    size_t n = 0;
    int marker = 0;

    if (used < 0)
        return used;
    if ((size_t)used / sizeof(struct aufs_wrec) > order_len)
        return -ENOBUFS;
    sorted = malloc(((size_t)used / sizeof(struct aufs_wrec) + 1) * sizeof(*sorted));
    if (sorted == NULL)
        return -ENOMEM;
    for (size_t pos = 0; pos < (size_t)used;) {
        struct aufs_wrec *r = (struct aufs_wrec *)(out + pos);
        int kind = w_export_kind(r, &marker);
        pos += r->reclen;
        if (kind < 0)
            continue;
        r->kind = (uint32_t)kind;
        sorted[n++] = r;
    }
    if (n > 1)
        qsort(sorted, n, sizeof(*sorted), w_tar_cmp);
    for (size_t i = 0; i < n; i++)
        order[i] = (uint32_t)((const char *)sorted[i] - out);
    free(sorted);
    *flags = marker ? AUFS_W_SCAN_HAS_MARKER : 0;
    *used_out = (size_t)used;
    return (ssize_t)n;
}

int aufs_w_run(struct aufs_wctx *ctx, int dir_fd, const char *recs, const uint32_t *order,
               size_t n, size_t *pos, const char *prefix, size_t prefix_len)
{
    char *tar = ctx->name;

    if (prefix_len + 1 > ctx->namelen)
        return -ENAMETOOLONG;
    memcpy(tar, prefix, prefix_len);
    for (size_t i = *pos; i < n; i++) {
        const struct aufs_wrec *r = (const struct aufs_wrec *)(recs + order[i]);
        const char *name = (const char *)(r + 1);
        size_t extra = r->kind == AUFS_W_K_WHITEOUT_DEVICE ? AUFS_WHITEOUT_PREFIX_LEN : 0;
        int rc;
        if (r->kind == AUFS_W_K_CONTENT && (S_ISDIR(r->mode) || r->nlink > 1)) {
            *pos = i; /* a directory to descend into, or an inode that may be written already */
            return AUFS_W_STOP;
        }
        if (prefix_len + extra + r->namelen + 2 > ctx->namelen) {
            *pos = i;
            return -ENAMETOOLONG;
        }
        memcpy(tar + prefix_len, AUFS_WHITEOUT_PREFIX, extra);
        memcpy(tar + prefix_len + extra, name, r->namelen + 1);
        if (r->kind != AUFS_W_K_CONTENT) {
            if (ctx->flags & AUFS_W_NO_WHITEOUTS)
                continue;
            if (i > 0) { /* ".wh.X" beside an X device: one whiteout is enough */
                const struct aufs_wrec *p = (const struct aufs_wrec *)(recs + order[i - 1]);
                if (p->kind != AUFS_W_K_CONTENT && w_tar_cmp(&p, &r) == 0)
                    continue;
            }
            rc = aufs_w_entry(ctx, -1, -1, NULL, tar, NULL, S_IFREG | 0444, 0, 0, 0, 0, 0);
        } else {
            rc = aufs_w_entry(ctx, dir_fd, -1, name, tar, NULL, r->mode, r->uid, r->gid,
                              r->mtime_sec, (int64_t)r->size, r->rdev);
        }
        if (rc) {
            *pos = i;
            return rc;
        }
    }
    *pos = n;
    return 0;
}
