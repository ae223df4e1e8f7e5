/* Two functions bound by an agreement: what contract_encode writes, contract_decode reads.
 * A patch that changes the format must change both, and no call may see one of each. */
int contract_encode(int x)
{
    return 2 * x;
}

int contract_decode(int y)
{
    return y / 2;
}

/* One library call using both, with time in between for a patch to land. */
int contract_roundtrip(int x)
{
    int y = contract_encode(x);
    for (volatile int i = 0; i < 200; i++)
        ;
    return contract_decode(y);
}
