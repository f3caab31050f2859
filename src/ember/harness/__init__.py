"""The runtime inside every container: imports the user's function and runs the inputs the worker
sends it over a unix socket. It must import fast: it is on every cold start's path."""
