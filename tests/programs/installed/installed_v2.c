/* The installed patch: version 2 of both. */
int version_v2(void)
{
    return 2;
}

int report_v2(void)
{
    return 2 * 2 + 20; /* 24 */
}
