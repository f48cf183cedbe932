"""Tree tensor networks and the (parallel) Basis-Update & Galerkin integrators: pure
array kernels, no I/O, no scheduling."""
