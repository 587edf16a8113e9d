/* aufs_api.h: the declarations of the aufs C core, written once.
 *
 * cffi parses this file as the extension's cdef (csrc/build_native.py) and every C file
 * includes it through aufs_native.h, so the C and the Python side cannot disagree on a
 * constant, a struct or a prototype. Only what cffi's cdef understands goes here: integer
 * #defines, structs, prototypes and comments; no #include, #if or inline code (aufs_native.h
 * has the include guard). Python mirrors of these structs are size-checked at import
 * (aufs._syscalls, aufs._fastpaths).
 */

/* ---- core.c ---- */
long aufs_page_size(void);

/* The reserved names the C gives meaning to, spelled once (aufs_native.h) and handed to
 * Python, which checks at import that aufs.whiteouts spells them the same. */
#define AUFS_NAME_WHITEOUT_PREFIX 0       /* ".wh." */
#define AUFS_NAME_META_PREFIX 1           /* ".wh..wh." */
#define AUFS_NAME_OPAQUE 2                /* ".wh..wh..opq" */
#define AUFS_NAME_XATTR_TRUSTED_OVERLAY 3 /* "trusted.overlay.": the union's private xattrs */
#define AUFS_NAME_XATTR_USER_OVERLAY 4    /* "user.overlay." */
#define AUFS_NAME_XATTR_FUSE_OVERLAY 5    /* "user.fuseoverlayfs." */
#define AUFS_NAME_COUNT 6
const char *aufs_name(int which);
int aufs_rename_exchange(const char *oldpath, const char *newpath);
int aufs_rename_noreplace(const char *oldpath, const char *newpath);

/* ---- mount.c: mount(2), umount2(2) ---- */
int aufs_mount(const char *source, const char *target, const char *fstype,
               unsigned long flags, const char *data);
int aufs_umount(const char *target, int lazy);
/* user and mount namespaces (aufs.userns): unshare(2) and setns(2) of CLONE_NEWUSER /
 * CLONE_NEWNS only; 0 or -errno */
#define AUFS_NS_USER 1
#define AUFS_NS_MOUNT 2
int aufs_unshare(int which);
int aufs_setns(int fd, int which);

/* ---- overlay.c: overlayfs through the new mount API ---- */
int aufs_overlay_mount(const char *target, const char *const *lowerdirs, size_t nlower,
                       const char *upperdir, const char *workdir,
                       const char *const *options, size_t noptions,
                       char *errbuf, size_t errlen);

/* ---- mountpoint.c: is this path the root of a mount? ---- */
int aufs_mountpoint_statx(const char *path);
int aufs_mountpoint_openat2(const char *path);

/* ---- mountinfo.c: /proc/PID/mountinfo parser ---- */
#define AUFS_MI_ROOT 0
#define AUFS_MI_MOUNTPOINT 1
#define AUFS_MI_OPTIONS 2
#define AUFS_MI_OPTIONAL 3
#define AUFS_MI_FSTYPE 4
#define AUFS_MI_SOURCE 5
#define AUFS_MI_SUPER_OPTIONS 6
#define AUFS_MI_NFIELDS 7

struct aufs_mountinfo {
    int mount_id;
    int parent_id;
    unsigned int major;
    unsigned int minor;
    size_t off[AUFS_MI_NFIELDS];
    size_t len[AUFS_MI_NFIELDS];
};

ssize_t aufs_mountinfo_next(const char *buf, size_t buflen, size_t pos,
                            struct aufs_mountinfo *rec, char *out, size_t outlen);
ssize_t aufs_unescape(const char *in, size_t inlen, char *out, size_t outlen);
ssize_t aufs_mountinfo_parse(const char *buf, size_t buflen, struct aufs_mountinfo *recs,
                             size_t nrecs, char *out, size_t outlen, size_t *errpos);

/* ---- probe.c: kernel features, probed once by the caller ---- */
#define AUFS_FEAT_STATX_MOUNT_ROOT 0x01
#define AUFS_FEAT_OPENAT2 0x02
#define AUFS_FEAT_NEW_MOUNT_API 0x04
#define AUFS_FEAT_OVERLAY 0x08
#define AUFS_FEAT_OVERLAY_LOWERDIR_PLUS 0x10
#define AUFS_FEAT_OVERLAY_LAYER_FD 0x20
#define AUFS_FEAT_AUFS 0x40
int aufs_probe_features(void);

/* ---- extract.c: layer-tar entries from libarchive written under a root dir fd ---- */
#define AUFS_X_PATH_MAX 4096
#define AUFS_X_DIR_RECORD_HEAD 20 /* a dirbuf record's head: int64 sec, int64 nsec, uint32 length */
#define AUFS_X_FLAG_REPORT_ALL 1 /* ctx->flags: return AUFS_X_DONE after every entry written */
#define AUFS_X_FLAG_ROOTLESS 2   /* ctx->flags: record owners, modes, devices in xattrs (rootless store) */
#define AUFS_X_FLAG_USERNS 4     /* with ROOTLESS: set owners and make nodes for real where this user
                                    namespace can, record only the rest (a userns store) */
#define AUFS_X_EOF 0        /* end of archive */
#define AUFS_X_DIR 1        /* a directory was written (its mtime is the caller's to set last) */
#define AUFS_X_SPECIAL 2    /* a reserved .wh. name: nothing written, the caller decides */
#define AUFS_X_DONE 3       /* an entry was written (with AUFS_X_FLAG_REPORT_ALL) */
#define AUFS_X_ARCHIVE 4    /* libarchive failed or warned: ask it for the message */
#define AUFS_X_UNSAFE 5     /* path or hard-link target climbs out of the root (raw in path/link) */
#define AUFS_X_LIMIT 6      /* max_bytes would be exceeded */
#define AUFS_X_CORRUPT 7    /* a header field or data block makes no sense */
#define AUFS_X_FLUSH 8      /* nothing read: empty the directory buffer, then call again */
#define AUFS_X_WARN 9       /* libarchive warned about the header just read (ask it for the
                             * message): aufs_x_resume writes the entry, or the caller refuses */

/* libarchive entry points, from the libarchive the caller loaded (no link-time dependency) */
struct aufs_xapi {
    void *read_next_header;
    void *read_data_block;
    void *entry_pathname;
    void *entry_hardlink;
    void *entry_symlink;
    void *entry_mode;
    void *entry_uid;
    void *entry_gid;
    void *entry_mtime;
    void *entry_mtime_nsec;
    void *entry_size;
    void *entry_rdevmajor;
    void *entry_rdevminor;
    void *entry_xattr_reset;
    void *entry_xattr_next;
    void *entry_sparse_count;
    void *entry_acl_reset;
    void *entry_acl_next;
    void *entry_sparse_reset;
    void *entry_sparse_next;
};

/* One extraction: caller-owned, filled by the caller up to parent_fd (= -1) */
struct aufs_xctx {
    const struct aufs_xapi *api;
    void *archive;     /* struct archive *, opened for reading */
    int root_fd;       /* the target directory (a real fd, not O_PATH) */
    int flags;
    int64_t max_bytes; /* content bytes allowed, < 0 for no limit */
    int64_t bytes;     /* content bytes written so far */
    int64_t entries;   /* headers read so far */
    int parent_fd;     /* cached O_PATH fd of parent_path, or -1 */
    void *entry;       /* the current struct archive_entry * */
    unsigned int mode; /* the current entry: type and permission bits */
    int is_hardlink;
    int64_t uid;
    int64_t gid;
    int64_t mtime_sec;
    int64_t mtime_nsec;
    int64_t size;
    int archive_status; /* libarchive's return code behind AUFS_X_ARCHIVE */
    /* directory times, recorded here instead of returning AUFS_X_DIR while there is room:
     * records of int64 sec, int64 nsec, uint32 length, the path, padded to 8 bytes. A record
     * with nsec -1 lists implied directories created by the writer: the components of the
     * path after its first `sec` bytes. */
    char *dirbuf;
    size_t dirbuf_size;
    size_t dirbuf_used;
    char path[AUFS_X_PATH_MAX];        /* normalised path, "" = the root */
    char link[AUFS_X_PATH_MAX];        /* normalised hard-link target */
    char parent_path[AUFS_X_PATH_MAX];
};

int aufs_x_normalize(const char *in, char *out, size_t outlen);
int aufs_x_remove(int dir_fd, const char *name);
int aufs_x_open_dir(int root_fd, const char *path, int create);
int aufs_x_make_dir(struct aufs_xctx *ctx, const char *path);
void aufs_x_forget_parent(struct aufs_xctx *ctx);
int aufs_x_write(struct aufs_xctx *ctx);
int aufs_x_next(struct aufs_xctx *ctx);
int aufs_x_resume(struct aufs_xctx *ctx);
void aufs_x_refuse(struct aufs_xctx *ctx);
void *aufs_x_utf8_locale(void);
void *aufs_x_use_locale(void *loc);
void aufs_x_free_locale(void *loc);
int aufs_x_dir_times(int root_fd, const char *path, int64_t sec, int64_t nsec);
int aufs_x_copy_up_dir(int root_fd, const char *path, int template_fd, char *names,
                       size_t names_len, char *value, size_t value_len);

/* ---- walk.c: layer directories read fast for export and the change list ---- */
/* results of aufs_w_entry and aufs_w_run (0: done) */
#define AUFS_W_OPAQUE 1  /* aufs_w_entry: the directory carries an opaque xattr "y" */
#define AUFS_W_ARCHIVE 2 /* aufs_w_entry: libarchive failed (ctx->archive_status) */
#define AUFS_W_STOP 3    /* aufs_w_run: the entry at *pos needs the caller */
/* flags: aufs_w_scan's flags argument, aufs_w_scan_sorted's *flags result */
#define AUFS_W_SCAN_STAT 1       /* lstat every entry (else d_type only) */
#define AUFS_W_SCAN_HAS_MARKER 1 /* the directory holds a regular .wh..wh..opq */
#define AUFS_W_K_CONTENT 0
#define AUFS_W_K_WHITEOUT_FILE 1   /* .wh.NAME regular file: written as is */
#define AUFS_W_K_WHITEOUT_DEVICE 2 /* NAME 0/0 device: written as .wh.NAME */

/* One directory entry; the NUL-terminated name follows, records are 8-byte aligned */
struct aufs_wrec {
    uint64_t ino;
    uint64_t dev;
    uint64_t size;
    uint64_t rdev;
    int64_t mtime_sec;
    int64_t mtime_nsec;
    uint32_t mode;
    uint32_t uid;
    uint32_t gid;
    uint32_t nlink;
    uint32_t namelen;
    uint32_t reclen;
    uint32_t kind;  /* aufs_w_scan_sorted: AUFS_W_K_* */
    uint32_t spare;
};

/* libarchive entry points, from the libarchive the caller loaded (no link-time dependency) */
struct aufs_wapi {
    void *entry_clear;
    void *entry_copy_pathname;
    void *entry_copy_symlink;
    void *entry_copy_hardlink;
    void *entry_set_mode;
    void *entry_set_size;
    void *entry_set_uid;
    void *entry_set_gid;
    void *entry_set_mtime;
    void *entry_set_rdevmajor;
    void *entry_set_rdevminor;
    void *entry_xattr_add_entry;
    void *entry_acl_add_entry;
    void *entry_sparse_add_entry;
    void *entry_sparse_reset;
    void *entry_sparse_next;
    void *write_header;
    void *write_data;
};

/* The archive's output when it is a file descriptor. libarchive writes unbuffered (block
 * size 0) into aufs_w_out_write, which gathers its bytes in buf; file data is read straight
 * into buf and handed to libarchive in place, so the callback finds it already there and
 * copies nothing. One copy in (read) and one out (write), as GNU tar. */
struct aufs_wout {
    int fd;
    int err;            /* errno of the write that failed, else 0 */
    char *buf;
    size_t cap;         /* at least 64 KiB */
    size_t used;
    int64_t total;      /* bytes accepted: written to fd or waiting in buf */
};

struct aufs_wctx {
    const struct aufs_wapi *api;
    void *archive;      /* struct archive *, opened for writing */
    void *entry;        /* a struct archive_entry * reused for every entry */
    char *buf;          /* scratch and data buffer, at least 128 KiB */
    size_t buflen;
    int archive_status; /* libarchive's return code behind AUFS_W_ARCHIVE */
    char *name;         /* tar name buffer for aufs_w_run */
    size_t namelen;
    struct aufs_wout *out; /* the archive's output if it is aufs_w_out_write, else NULL */
    int flags;          /* AUFS_W_ROOTLESS: read back what a rootless extraction recorded */
    uint32_t own_uid;   /* with AUFS_W_ROOTLESS: the store owner's ids, exported as 0 */
    uint32_t own_gid;
};
#define AUFS_W_ROOTLESS 1
#define AUFS_W_NO_WHITEOUTS 2 /* aufs_w_run: the directory is at or below an opaque one of the
                                 layer: its whiteouts are redundant, written not */

/* aufs_w_changes: change kinds, Docker's values */
#define AUFS_W_MODIFY 0
#define AUFS_W_ADD 1
#define AUFS_W_DELETE 2

ssize_t aufs_w_scan(int dir_fd, int flags, char *out, size_t outlen);
ssize_t aufs_w_scan_sorted(int dir_fd, char *out, size_t outlen, uint32_t *order,
                           size_t order_len, int *flags, size_t *used_out);
int aufs_w_run(struct aufs_wctx *ctx, int dir_fd, const char *recs, const uint32_t *order,
               size_t n, size_t *pos, const char *prefix, size_t prefix_len);
ssize_t aufs_w_changes(int layer_fd, int lower_fd, char *paths, size_t paths_len,
                       size_t *paths_used, unsigned char *kinds, size_t kinds_len);
int aufs_w_entry(struct aufs_wctx *ctx, int dir_fd, int fd, const char *name,
                 const char *tar_name, const char *hardlink, unsigned int mode, int64_t uid,
                 int64_t gid, int64_t mtime, int64_t size, uint64_t rdev);
ssize_t aufs_w_out_write(void *archive, void *out, const void *buff, size_t len);
int aufs_w_out_flush(struct aufs_wout *out);
int aufs_w_out_close(struct aufs_wout *out, size_t block, size_t last_block);
