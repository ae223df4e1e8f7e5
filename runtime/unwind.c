/*
 * ulp_track's personality routine: how the runtime learns that an unwind (a C++ exception,
 * pthread_cancel, pthread_exit) passes a tracked call, which will then never return through
 * ulp_return.
 *
 * The unwinder (libgcc) calls the personality of every frame it walks, twice for an exception
 * (a search, then the cleanup that really unwinds), once for a forced unwind (cancellation).
 * The frame it shows us is the tracked call's row at ulp_return, where %rbx is the shadow frame
 * (track.S). Only the cleanup phase means the call is over; the search may find no handler
 * and change nothing. We never catch anything: the unwind always continues.
 */
#define _GNU_SOURCE
#include <unwind.h>

#include "ulp.h"

#define DWARF_RBX 3

__attribute__((visibility("hidden"))) _Unwind_Reason_Code
ulp_personality(int version, _Unwind_Action actions, _Unwind_Exception_Class exception_class,
                struct _Unwind_Exception *exception, struct _Unwind_Context *context)
{
    (void)exception_class;
    (void)exception;
    /* Only the row at ulp_return is a tracked call in progress; elsewhere in ulp_track (a
     * signal frame interrupted the entry) no frame is complete. */
    if (version == 1 && (actions & _UA_CLEANUP_PHASE) &&
        _Unwind_GetIP(context) == (_Unwind_Ptr)ulp_return)
        ulp_unwound((struct ulp_frame *)_Unwind_GetGR(context, DWARF_RBX));
    return _URC_CONTINUE_UNWIND;
}
