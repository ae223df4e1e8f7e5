/* The patch: a new format, 3x + 1, on both sides. */
int enc_v2(int x)
{
    return 3 * x + 1;
}

int dec_v2(int y)
{
    return (y - 1) / 3;
}
