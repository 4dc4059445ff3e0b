/* A filesystem without file locks (Lustre mounted `noflock`, NFS without its lock service):
 * loaded with LD_PRELOAD, flock() fails with ENOSYS, as such a filesystem's does, for every
 * file under NO_FLOCK_UNDER; elsewhere it locks as usual. Built by tests/e2e/test_faults.py.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

int flock(int fd, int operation) {
    static int (*real)(int, int);
    if (!real) real = (int (*)(int, int))dlsym(RTLD_NEXT, "flock");
    const char *under = getenv("NO_FLOCK_UNDER");
    if (under) {
        char link[64], target[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t length = readlink(link, target, sizeof target - 1);
        if (length > 0) {
            target[length] = '\0';
            if (strncmp(target, under, strlen(under)) == 0) {
                errno = ENOSYS;
                return -1;
            }
        }
    }
    return real(fd, operation);
}
