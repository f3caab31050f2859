"""A local package that tests/e2e/apps/images.py puts into its image."""

GREETING = "hello from mypkg"
