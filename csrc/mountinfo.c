/* mountinfo.c: a reentrant parser of /proc/PID/mountinfo lines.
 *
 * The caller reads the file (its path is the caller's business) and hands over the bytes; each
 * call parses the line at `pos`, writes the unescaped text fields one after another into the
 * caller's `out` buffer, records where each one is in `rec`, and returns the position of the
 * next line. No line-length limit, no static state, no getmntent.
 *
 * Line format (proc(5)):
 *   ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
 * Text fields escape bytes as \ooo (the kernel escapes space, tab, newline and backslash).
 * The optional fields are kept as one space-separated field.
 */
#include "aufs_native.h"

#include <string.h>

static int is_octal(char c)
{
    return c >= '0' && c <= '7';
}

/* Copy in[0..inlen) to out, turning every \ooo (value <= 0377) into that byte. Any other
 * backslash is kept as it is. Returns the length written, or -ENOSPC. */
ssize_t aufs_unescape(const char *in, size_t inlen, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < inlen; i++) {
        char c = in[i];
        if (c == '\\' && i + 3 < inlen && in[i + 1] >= '0' && in[i + 1] <= '3'
            && is_octal(in[i + 2]) && is_octal(in[i + 3])) {
            c = (char)(((in[i + 1] - '0') << 6) | ((in[i + 2] - '0') << 3) | (in[i + 3] - '0'));
            i += 3;
        }
        if (o >= outlen)
            return -ENOSPC;
        out[o++] = c;
    }
    return (ssize_t)o;
}

/* Parse a non-negative decimal integer in [p, end) up to `stop`; returns the end or NULL. */
static const char *parse_uint(const char *p, const char *end, char stop, unsigned long max,
                              unsigned long *value)
{
    unsigned long v = 0;
    const char *start = p;
    while (p < end && *p >= '0' && *p <= '9') {
        unsigned long d = (unsigned long)(*p - '0');
        if (v > (max - d) / 10)
            return NULL;
        v = v * 10 + d;
        p++;
    }
    if (p == start || p >= end || *p != stop)
        return NULL;
    *value = v;
    return p + 1;
}

/* The next space-separated token in [*p, end): sets tok and toklen, steps past the space. */
static int next_token(const char **p, const char *end, const char **tok, size_t *toklen)
{
    if (*p > end)
        return 0;
    const char *sp = memchr(*p, ' ', (size_t)(end - *p));
    const char *stop = sp ? sp : end;
    *tok = *p;
    *toklen = (size_t)(stop - *p);
    *p = sp ? sp + 1 : end + 1;
    return 1;
}

ssize_t aufs_mountinfo_next(const char *buf, size_t buflen, size_t pos,
                            struct aufs_mountinfo *rec, char *out, size_t outlen)
{
    if (pos >= buflen)
        return 0;

    const char *line = buf + pos;
    const char *nl = memchr(line, '\n', buflen - pos);
    const char *end = nl ? nl : buf + buflen;
    size_t next = (size_t)(end - buf) + (nl ? 1 : 0);
    const char *p = line;
    unsigned long v;
    size_t o = 0;

    if ((size_t)(end - line) > outlen)
        return -ENOSPC;

    if ((p = parse_uint(p, end, ' ', 0x7fffffffUL, &v)) == NULL)
        return -EINVAL;
    rec->mount_id = (int)v;
    if ((p = parse_uint(p, end, ' ', 0x7fffffffUL, &v)) == NULL)
        return -EINVAL;
    rec->parent_id = (int)v;
    if ((p = parse_uint(p, end, ':', 0xffffffffUL, &v)) == NULL)
        return -EINVAL;
    rec->major = (unsigned int)v;
    if ((p = parse_uint(p, end, ' ', 0xffffffffUL, &v)) == NULL)
        return -EINVAL;
    rec->minor = (unsigned int)v;

    static const int fixed[] = {AUFS_MI_ROOT, AUFS_MI_MOUNTPOINT, AUFS_MI_OPTIONS};
    const char *tok;
    size_t toklen;
    for (size_t f = 0; f < sizeof(fixed) / sizeof(fixed[0]); f++) {
        if (!next_token(&p, end, &tok, &toklen))
            return -EINVAL;
        ssize_t n = aufs_unescape(tok, toklen, out + o, outlen - o);
        if (n < 0)
            return n;
        rec->off[fixed[f]] = o;
        rec->len[fixed[f]] = (size_t)n;
        o += (size_t)n;
    }

    /* Optional fields: zero or more tokens up to a lone "-". */
    rec->off[AUFS_MI_OPTIONAL] = o;
    for (size_t count = 0;; count++) {
        if (!next_token(&p, end, &tok, &toklen) || tok >= end)
            return -EINVAL;
        if (toklen == 1 && tok[0] == '-')
            break;
        if (count > 0) {
            if (o >= outlen)
                return -ENOSPC;
            out[o++] = ' ';
        }
        ssize_t n = aufs_unescape(tok, toklen, out + o, outlen - o);
        if (n < 0)
            return n;
        o += (size_t)n;
    }
    rec->len[AUFS_MI_OPTIONAL] = o - rec->off[AUFS_MI_OPTIONAL];

    /* FSTYPE and SOURCE are single tokens; SUPER_OPTIONS is the rest of the line. */
    static const int tail[] = {AUFS_MI_FSTYPE, AUFS_MI_SOURCE};
    for (size_t f = 0; f < sizeof(tail) / sizeof(tail[0]); f++) {
        if (!next_token(&p, end, &tok, &toklen) || tok + toklen >= end)
            return -EINVAL;
        ssize_t n = aufs_unescape(tok, toklen, out + o, outlen - o);
        if (n < 0)
            return n;
        rec->off[tail[f]] = o;
        rec->len[tail[f]] = (size_t)n;
        o += (size_t)n;
    }
    ssize_t n = aufs_unescape(p, (size_t)(end - p), out + o, outlen - o);
    if (n < 0)
        return n;
    rec->off[AUFS_MI_SUPER_OPTIONS] = o;
    rec->len[AUFS_MI_SUPER_OPTIONS] = (size_t)n;
    return (ssize_t)next;
}

/* Parse every line of buf into recs[0..nrecs) in one call, all text fields into one out buffer
 * (outlen >= buflen is always enough: unescaping only shrinks). Offsets in recs are from the
 * start of out. Returns the number of records, or -errno with *errpos set to the start of the
 * offending line (-ENOSPC: more lines than nrecs). */
ssize_t aufs_mountinfo_parse(const char *buf, size_t buflen, struct aufs_mountinfo *recs,
                             size_t nrecs, char *out, size_t outlen, size_t *errpos)
{
    size_t pos = 0, o = 0, count = 0;

    while (pos < buflen) {
        if (count == nrecs) {
            *errpos = pos;
            return -ENOSPC;
        }
        struct aufs_mountinfo *rec = &recs[count];
        ssize_t next = aufs_mountinfo_next(buf, buflen, pos, rec, out + o, outlen - o);
        if (next <= 0) {
            *errpos = pos;
            return next < 0 ? next : -EINVAL;
        }
        for (int f = 0; f < AUFS_MI_NFIELDS; f++)
            rec->off[f] += o;
        /* SUPER_OPTIONS is written last. */
        o = rec->off[AUFS_MI_SUPER_OPTIONS] + rec->len[AUFS_MI_SUPER_OPTIONS];
        count++;
        pos = (size_t)next;
    }
    return (ssize_t)count;
}
