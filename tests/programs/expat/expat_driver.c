/* Drives the libexpat it is linked against, one line out per command on stdin:
 *   negative  a fresh parser, a buffer from XML_GetBuffer, then XML_ParseBuffer(parser, -1, 0)
 *             (CVE-2024-45490): prints "STATUS ERROR_CODE"
 *   parse     a small document written into XML_GetBuffer's buffer and parsed with
 *             XML_ParseBuffer: prints "ok ELEMENTS ATTRIBUTES TEXT" or "error CODE"
 *   stats, anything else: "ok"; quit: exits 0. */
#include <expat.h>
#include <stdio.h>
#include <string.h>

static const char document[] =
    "<?xml version=\"1.0\"?>\n"
    "<doc version=\"2\"><item id=\"a\">x</item><item id=\"b\">&lt;y&gt;</item></doc>\n";

struct counts {
    int elements, attributes;
    char text[64];
};

static void XMLCALL on_start(void *data, const XML_Char *name, const XML_Char **attributes)
{
    struct counts *c = data;
    (void)name;
    c->elements++;
    for (; *attributes; attributes += 2)
        c->attributes++;
}

static void XMLCALL on_text(void *data, const XML_Char *s, int len)
{
    struct counts *c = data;
    size_t used = strlen(c->text);
    if (used + (size_t)len < sizeof c->text)
        strncat(c->text, s, (size_t)len);
}

static void negative(void)
{
    XML_Parser parser = XML_ParserCreate(NULL);
    if (XML_GetBuffer(parser, 16) == NULL) {
        puts("no buffer");
    } else {
        enum XML_Status status = XML_ParseBuffer(parser, -1, 0);
        printf("%d %d\n", (int)status, (int)XML_GetErrorCode(parser));
    }
    XML_ParserFree(parser);
}

static void parse(void)
{
    struct counts c = {0, 0, ""};
    XML_Parser parser = XML_ParserCreate(NULL);
    XML_SetUserData(parser, &c);
    XML_SetStartElementHandler(parser, on_start);
    XML_SetCharacterDataHandler(parser, on_text);
    void *buffer = XML_GetBuffer(parser, (int)sizeof document);
    if (buffer == NULL) {
        puts("no buffer");
    } else {
        memcpy(buffer, document, sizeof document - 1);
        if (XML_ParseBuffer(parser, (int)sizeof document - 1, 1) == XML_STATUS_OK)
            printf("ok %d %d %s\n", c.elements, c.attributes, c.text);
        else
            printf("error %d\n", (int)XML_GetErrorCode(parser));
    }
    XML_ParserFree(parser);
}

int main(void)
{
    char line[64];
    puts("ready");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        if (!strcmp(line, "quit\n"))
            break;
        if (!strcmp(line, "negative\n"))
            negative();
        else if (!strcmp(line, "parse\n"))
            parse();
        else
            puts("ok");
        fflush(stdout);
    }
    return 0;
}
