"""Build-system integrations that prepare libraries as part of a build."""
