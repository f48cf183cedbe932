"""Kernels of parallel diffusion sampling by sliding-window Picard iteration (ParaDiGMS).

Modules
-------
schedules
    Noise schedules (linear beta, cosine) and the per-step coefficients of the DDPM and
    DDIM samplers (step means as ``a x + b eps``, step noise scales, tolerance variances).
models
    The model interface ``eps(x, t)`` and two models that need no download: the exact
    Gaussian-mixture noise predictor and a small MLP denoiser (array-API forward pass).
training
    Fitting the MLP denoiser with scikit-learn.
samplers
    Pre-drawn noise, the sequential sampler, the Picard window update (plain and
    secant-linearised), triangular Anderson mixing, and the sliding-window Picard
    sampler, plain or accelerated.
"""
