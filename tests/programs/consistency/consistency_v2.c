/* The patch: a new format, 3x + 1, on both sides. */
int m_apply(int y, int (*cb)(int));
int enc_v2(int x)
{
    return 3 * x + 1;
}

int dec_v2(int y)
{
    return (y - 1) / 3;
}

/* L's handed_dec: the new half goes back into L the same way as the old one did. */
int (*volatile *handed_dec_ref)(int);

int produce_inlined_v2(int x)
{
    return m_apply(3 * x + 1, *handed_dec_ref);
}
