/* basic_add, counting calls ten at a time in the target's thread-local basic_calls. */
typedef struct {
    unsigned long module;
    unsigned long offset;
} tls_index;

void *__tls_get_addr(tls_index *index);

tls_index basic_calls_index; /* filled by the runtime: basic_calls's module and offset */

int basic_add_counting(int a, int b)
{
    int *calls = __tls_get_addr(&basic_calls_index);
    *calls += 10;
    return a + b;
}
