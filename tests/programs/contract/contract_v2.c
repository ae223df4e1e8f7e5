/* The new format: 3x + 1. */
int contract_encode_v2(int x)
{
    return 3 * x + 1;
}

int contract_decode_v2(int y)
{
    return (y - 1) / 3;
}
