/* core.c: small helpers shared by the other C files. */
#include "aufs_native.h"

#include <unistd.h>

long aufs_page_size(void)
{
    long size = sysconf(_SC_PAGESIZE);
    return size > 0 ? size : 4096;
}
