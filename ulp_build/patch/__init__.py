"""Authoring patches: the description a patch author writes, the metadata the trigger reads, and
the packer that turns one into the other."""
