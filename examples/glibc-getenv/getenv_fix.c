/* A fix to glibc 2.36's getenv, replaced live in running processes (docs/glibc.md, "Live-patching
 * the C library").
 *
 * The bug: getenv compares the name with the start of each environment entry and then expects
 * '=' right after it, so a name that itself contains '=' matches inside an entry's value: with
 * LANG=C=x in the environment, getenv("LANG=C") returns "x". setenv refuses such a name
 * (EINVAL), so no variable can have it; the fix returns NULL for it, and for the empty name, and
 * looks names up as before otherwise. */

#include <stddef.h>
#include <string.h>

/* The environment the program sees: an executable that names `environ` gets its own copy of the
 * variable, which the C library then uses too, so the patch links to it the same way rather
 * than naming the C library's own symbol in [references]. */
extern char **environ;

char *getenv_fixed(const char *name)
{
    size_t len = strcspn(name, "=");
    if (len == 0 || name[len] != '\0' || environ == NULL)
        return NULL;
    for (char **entry = environ; *entry != NULL; entry++)
        if (strncmp(*entry, name, len) == 0 && (*entry)[len] == '=')
            return *entry + len + 1;
    return NULL;
}
