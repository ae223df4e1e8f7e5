"""The one exception type every ulp_build API raises for bad input.

The CLI turns it into the one-line message users see, so the message must already name the file
(or process) and the problem, and must not need a traceback to be understood.
"""


class UlpError(Exception):
    """A clear, user-facing failure: bad input, an unsupported file, a refused operation."""
