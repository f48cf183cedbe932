"""Kernels of the two-level anisotropic domain-splitting solver (ASDSM).

Modules
-------
problems
    Manufactured advection-diffusion problems with known solutions.
grid
    Index bookkeeping: fine grid, sub-meshes, coarse nodes, blocks of holes.
operator
    Sparse assembly of the finite-difference operator and its matrix-free stencil.
combine
    Merge of the sub-mesh solutions at coarse nodes, the spline correction and the
    skeleton.
holes
    Dirichlet solves on the boxes cut out by the skeleton.
"""
