/* A disk quota used up (HPC scratch: a user's block or file quota): loaded with LD_PRELOAD,
 * creating a file whose path starts with QUOTA_UNDER and holds QUOTA_MARK fails with
 * EDQUOT, as the filesystem's own check fails it; every other open is as usual. Built by
 * tests/e2e/test_faults.py.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static int over_quota(const char *path, int flags) {
    const char *under = getenv("QUOTA_UNDER");
    const char *mark = getenv("QUOTA_MARK");
    if (!(flags & O_CREAT) || !path || !under || !mark) return 0;
    return strncmp(path, under, strlen(under)) == 0 && strstr(path, mark) != NULL;
}

#define OPEN_LIKE(name)                                                        \
    int name(const char *path, int flags, ...) {                               \
        static int (*real)(const char *, int, ...);                            \
        if (!real) real = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, #name); \
        va_list arguments;                                                     \
        va_start(arguments, flags);                                            \
        mode_t mode = (flags & O_CREAT) ? va_arg(arguments, mode_t) : 0;       \
        va_end(arguments);                                                     \
        if (over_quota(path, flags)) {                                         \
            errno = EDQUOT;                                                    \
            return -1;                                                         \
        }                                                                      \
        return real(path, flags, mode);                                        \
    }

#define OPENAT_LIKE(name)                                                      \
    int name(int directory, const char *path, int flags, ...) {                \
        static int (*real)(int, const char *, int, ...);                       \
        if (!real) real = (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, #name); \
        va_list arguments;                                                     \
        va_start(arguments, flags);                                            \
        mode_t mode = (flags & O_CREAT) ? va_arg(arguments, mode_t) : 0;       \
        va_end(arguments);                                                     \
        if (over_quota(path, flags)) {                                         \
            errno = EDQUOT;                                                    \
            return -1;                                                         \
        }                                                                      \
        return real(directory, path, flags, mode);                             \
    }

OPEN_LIKE(open)
OPEN_LIKE(open64)
OPENAT_LIKE(openat)
OPENAT_LIKE(openat64)
