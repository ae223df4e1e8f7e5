/* The live patch: the discount is 20%, as advertised. */
int shop_discount_fixed(int price)
{
    return price - price * 20 / 100;
}
