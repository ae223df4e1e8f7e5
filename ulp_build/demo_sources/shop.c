/* libshop: the demo's library. Its bug: a 20% discount that takes off only 10%. */
int shop_discount(int price)
{
    return price - price * 10 / 100;
}

int shop_total(int price, int quantity)
{
    return shop_discount(price) * quantity;
}
