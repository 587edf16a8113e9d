/* aufs_native.h: shared header of the aufs C core.
 *
 * Conventions (all files): functions return 0 or a non-negative result on success and
 * -errno on failure; buffers are owned by the caller; no static or global mutable state
 * (cffi releases the GIL, so everything must be reentrant); no Python.h.
 */
#ifndef AUFS_NATIVE_H
#define AUFS_NATIVE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

long aufs_page_size(void);

#endif
