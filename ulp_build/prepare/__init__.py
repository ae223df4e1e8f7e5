"""Preparing libraries for live patching: finding patchable functions, generating the added code,
rewriting the ELF file, and checking the result."""
