/* One of two patches stacked on basic_square: x * x + 2000. */
int basic_square_plus_2000(int x)
{
    return x * x + 2000;
}
