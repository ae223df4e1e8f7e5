/* Preloaded into expat's test suite `runtests`: as the process exits, after the suite has run,
 * asks the libexpat it shares with the suite whether CVE-2024-45490 is fixed there, on stderr:
 * "expat probe: STATUS ERROR_CODE" of XML_ParseBuffer(parser, -1, 0) on a fresh parser.
 * The suite as Debian ships it has no test of that fix (Debian's patch is the library's change
 * alone), and a process that has exited cannot be asked with `ulp patches -p`. */
#include <expat.h>
#include <stdio.h>

/* A destructor of a preloaded library that needs libexpat runs before libexpat's. */
__attribute__((destructor)) static void probe(void)
{
    XML_Parser parser = XML_ParserCreate(NULL);
    if (parser == NULL || XML_GetBuffer(parser, 16) == NULL) {
        fputs("expat probe: no parser\n", stderr);
    } else {
        enum XML_Status status = XML_ParseBuffer(parser, -1, 0);
        fprintf(stderr, "expat probe: %d %d\n", (int)status, (int)XML_GetErrorCode(parser));
    }
    XML_ParserFree(parser);
}
