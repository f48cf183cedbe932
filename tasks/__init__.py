"""Pure array kernels: what tilegraph computes.

Nothing in this package does I/O, scheduling or keeps global state; every function
takes arrays and plain parameters and returns arrays. Kernels are written against the
array API (``array_api_compat.array_namespace``) where the operation is in the
standard, so they run on NumPy and CuPy alike.
"""
