/* Library M of the consistency tests: L's produce() tail-calls m_apply, which calls L back.
 * m_hold makes m_apply stop between the two (after L's enc ran, before its dec runs), so a
 * test can change the patch exactly there. Otherwise it waits a little (as the roundtrips do
 * between enc and dec) for a patch to land in. */
#include <unistd.h>

#include "consistency.h"

static int entered = -1, release = -1;

void m_hold(int entered_fd, int release_fd)
{
    entered = entered_fd;
    release = release_fd;
}

int m_apply(int y, int (*cb)(int))
{
    if (entered >= 0) {
        char c = 'h';
        if (write(entered, &c, 1) != 1 || read(release, &c, 1) != 1)
            return -1;
    }
    for (volatile int i = 0; i < L_DELAY; i++)
        ;
    return cb(y);
}
