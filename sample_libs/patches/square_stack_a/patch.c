/* One of two patches stacked on basic_square: x * x + 1000. */
int basic_square_plus_1000(int x)
{
    return x * x + 1000;
}
