#ifndef TRACKING_H
#define TRACKING_H

typedef long (*tracking_callback)(long);

void tracking_empty(void);                          /* the cheapest possible tracked call */
long tracking_call(tracking_callback callback, long x); /* runs the caller's code inside */
long tracking_spin(long n);                         /* some work, for threads */
long tracking_tail(long n);                         /* tail-calls tracking_spin through the PLT */
long tracking_block_read(int fd);                   /* blocks in read() */
long tracking_block_sleep(long seconds);            /* blocks in nanosleep() */
long tracking_block_pause(void);                    /* blocks in pause() */
int tracking_backtrace(void);                       /* prints backtrace() from inside */
void tracking_sort(int *values, unsigned long count); /* qsort with a static comparator */

#endif
