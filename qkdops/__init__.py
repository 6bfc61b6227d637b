"""qkdops — command line and runtime of the QKD observability stack."""
