/* basic_scaled, now bumping the target's static `factor` on every call. */
int *basic_factor; /* filled by the runtime with the address of the target's `factor` */

int basic_scaled_bumping(int x)
{
    (*basic_factor)++;
    return x * *basic_factor + 1;
}
