/* A second installed patch, on top of installed_v2: report again. */
int report_v3(void)
{
    return 36;
}
