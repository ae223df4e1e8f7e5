"""Live processes: reading them from outside, stopping them with ptrace, and the patching protocol
that applies, reverts and finishes patches in them."""
