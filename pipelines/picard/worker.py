"""The stateful worker of ``picard``: one model replica per worker (per GPU with CUDA).

A :class:`ModelReplica` is created once per worker as an executor actor; the driver
sends it slices of a Picard window ``(rows, *sample_shape)`` with their timesteps and
gets the predicted noise back. It also runs the sequential baseline next to the model,
so that baseline pays no per-step communication, and (:meth:`ModelReplica.picard`) the
whole Picard loop the same way, for one replica.
"""

from __future__ import annotations

import numbers
import sys
import time

import numpy as np
from tilegraph.tasks.devices import array_module, deterministic_blas, to_host
from tilegraph.tasks.picard.models import GaussianMixture, MLPDenoiser
from tilegraph.tasks.picard.samplers import ModelOutputError, picard, sequential

from .batch import model_label


def _local(a):
    """``a`` itself, or a fresh aligned C-contiguous copy where ``a`` is a NumPy array
    that is not: arrays unpickled by Dask or Ray may sit at any byte offset of the
    message, and NumPy's matmul rounds differently (no BLAS) on unaligned operands."""
    if isinstance(a, np.ndarray) and not (a.flags.aligned and a.flags.c_contiguous):
        return np.array(a, order="C", copy=True)
    return a


def build_model(spec: dict, device: str = "cpu"):
    """The model a picklable ``spec`` describes.

    See :func:`tilegraph.pipelines.picard.model_spec.model_spec`.

    ``spec["kind"]`` is ``"gmm"`` (means, weights, spread, abar), ``"mlp"`` (layer
    arrays as ``storage`` ArrayRefs ``w0, b0, w1, ...``, train_steps, sample_shape,
    n_freq) or ``"custom"`` (``target`` ``"package.module:factory"``, called with
    ``abar``; the factory must be importable on the workers) or ``"diffusers"`` (a
    pipeline directory's network, loaded on this worker, on its GPU with ``device="cuda"``).
    A custom factory may return a ``torch.nn.Module`` or another callable on torch tensors:
    it is wrapped in :class:`~tilegraph.tasks.picard.torch_models.TorchDenoiser`.
    """
    if spec["kind"] == "digits-unet":
        from tilegraph.tasks.picard.torch_models import TorchDenoiser
        from tilegraph.tasks.picard.unet_training import build_unet

        weights = {}
        for name, shape, ref in zip(spec["names"], spec["shapes"], spec["refs"], strict=True):
            weights[name] = ref.read().reshape(shape)
        net = build_unet(spec["config"], weights)
        abar = _local(spec["abar"])
        return TorchDenoiser(net, abar, (1, 8, 8), "epsilon", spec["dtype"], device)
    if spec["kind"] == "diffusers":
        from tilegraph.tasks.picard.torch_models import TorchDenoiser, load_unet

        cond = uncond = None
        if spec.get("prompt_states"):
            cond_ref, uncond_ref = spec["prompt_states"]
            cond = np.asarray(cond_ref.read(), dtype=np.float32)
            uncond = None if uncond_ref is None else np.asarray(uncond_ref.read(), np.float32)
        elif spec.get("conditioning"):
            from tilegraph.storage.groups import read_arrays

            names = ("cond", "uncond") if spec["guidance_scale"] != 1.0 else ("cond",)
            cond, *rest = read_arrays(spec["conditioning"], names)
            uncond = rest[0] if rest else None
        from tilegraph.storage.files import local_copy

        return TorchDenoiser(
            load_unet(local_copy(spec["path"]), spec["class_name"], spec["dtype"]),
            _local(spec["abar"]),
            spec["sample_shape"],
            spec["prediction_type"],
            spec["dtype"],
            device,
            spec.get("guidance_scale", 1.0),
            spec.get("null_class"),
            cond,
            uncond,
        )
    if spec["kind"] == "gmm":
        return GaussianMixture(spec["means"], spec["weights"], spec["spread"], spec["abar"])
    if spec["kind"] == "custom":
        from ..imports import resolve

        model = resolve(spec["target"], field="custom")(_local(spec["abar"]))
        return _wrap_torch(model, spec, device)
    if spec["kind"] == "mlp":
        n = spec["layers"]
        ws = [spec["refs"][f"w{i}"].read() for i in range(n)]
        bs = [spec["refs"][f"b{i}"].read() for i in range(n)]
        return MLPDenoiser(ws, bs, spec["train_steps"], spec["sample_shape"], spec["n_freq"])
    raise ValueError(f"unknown model kind {spec['kind']!r}")


def custom_model_problem(model, target: str) -> str | None:
    """What makes the object that factory ``target`` returned unusable as a model (one
    line), or None: it needs ``eps(x, t)`` and ``sample_shape``, or must be a
    ``torch.nn.Module`` with ``sample_shape``; ``sample_shape`` must be a tuple of
    positive integers (:func:`shape_problem`). Imports nothing (a torch module means
    torch was imported)."""
    name = type(model).__name__
    try:
        shape = model.sample_shape
    except AttributeError:
        shape = None
    except Exception as exc:  # a property of the user's that raises
        msg = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        return f"the sample_shape of the {name} that {target} returned raised {msg}"
    if callable(getattr(model, "eps", None)):
        if shape is None:
            return (
                f"{target} returned a {name} with eps(x, t) but without sample_shape (see "
                "tilegraph.tasks.picard.models.DiffusionModel)"
            )
    else:
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(model, torch.nn.Module):
            return (
                f"{target} returned a {name}, neither an object with eps(x, t) and "
                "sample_shape nor a torch.nn.Module"
            )
        if shape is None:
            return (
                f"the torch module {name} that {target} returned needs a sample_shape "
                "attribute (the shape of one sample, e.g. (1, 28, 28))"
            )
    problem = shape_problem(shape)
    if problem is not None:
        return f"the sample_shape of the {name} that {target} returned {problem}"
    return None


def shape_problem(shape) -> str | None:
    """What is wrong with a model's ``sample_shape`` (completing "the sample_shape ...")
    or None: it must be a tuple (or list) of at least one positive integer."""
    if isinstance(shape, np.ndarray) and shape.ndim == 1:
        shape = shape.tolist()
    if not isinstance(shape, (tuple, list)):
        kind = type(shape).__name__
        return f"must be a tuple of positive integers, not a {kind} ({shape!r:.60})"
    if not shape or not all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in shape
    ):
        return f"must be a tuple of at least one positive integer (got {tuple(shape)!r:.80})"
    return None


def _wrap_torch(model, spec: dict, device: str):
    """``model`` itself, or a torch network (a ``torch.nn.Module`` with ``sample_shape``)
    wrapped as a diffusion model predicting the noise."""
    problem = custom_model_problem(model, spec["target"])
    if problem is not None:
        raise TypeError(f"model=custom: {problem}")
    if hasattr(model, "eps"):
        return model
    from tilegraph.tasks.picard.torch_models import TorchDenoiser

    null = spec.get("null_class")
    return TorchDenoiser(
        model,
        _local(spec["abar"]),
        model.sample_shape,
        getattr(model, "prediction_type", "epsilon"),
        str(next(model.parameters()).dtype).removeprefix("torch."),
        device,
        spec.get("guidance_scale", 1.0),
        getattr(model, "null_class", None) if null is None else null,
    )


class ModelReplica:
    """A model replica living on one worker.

    Parameters
    ----------
    spec : dict
        Model description for :func:`build_model`.
    device : {"cpu", "cuda"}
        ``"cuda"`` evaluates with CuPy on the worker's GPU.
    """

    def __init__(self, spec: dict, device: str = "cpu"):
        self.model = build_model(spec, device)
        self.device = device
        self._xp = array_module(device)
        kind = {"mlp": "digits"}.get(spec["kind"], spec["kind"])
        self.label = model_label(kind, spec.get("target"), spec.get("path"))
        self._path, self._decoder_spec = spec.get("path"), spec.get("decoder")
        self._decoder = None  # loaded at the first decode

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Latents ``z`` (n, C, h, w) decoded by the pipeline directory's autoencoder
        into images (n, C_img, H, W) in [0, 1] (float64, on the host). The autoencoder
        is loaded at the first call and kept."""
        dec = self._decoder_spec
        if dec is None:
            raise ValueError(f"{self.label} has no autoencoder to decode with")
        if self._decoder is None:
            from tilegraph.storage.files import local_copy
            from tilegraph.tasks.picard.torch_models import LatentDecoder, load_component

            net = load_component(
                local_copy(self._path), dec["subfolder"], dec["class_name"], dec["dtype"]
            )
            self._decoder = LatentDecoder(
                net, dec["scaling_factor"], dec["shift_factor"], dec["dtype"], self.device,
                dec.get("latents_mean"), dec.get("latents_std"),
            )  # fmt: skip
        xp = self._xp
        with deterministic_blas():
            out = self._decoder(xp.asarray(_local(z)))
        return np.asarray(to_host(out), dtype=np.float64)

    def _eps(self, x, t, labels=None):
        if labels is None:
            return self.model.eps(x, t)
        return self.model.eps(x, t, labels=labels)

    def eps(self, x: np.ndarray, t: np.ndarray, labels=None) -> np.ndarray:
        """Predicted noise of rows ``x`` (N, *sample_shape) at timesteps ``t`` (N,).

        Single-threaded BLAS on the CPU and aligned operands (the model keeps its own
        copies of its parameters, see :func:`tilegraph.tasks.picard.models._owned`): a run must
        give the same bits on every backend, in-process or not.
        """
        xp = self._xp
        with deterministic_blas():
            out = self._eps(xp.asarray(_local(x)), xp.asarray(_local(t)), labels)
        return to_host(out)

    def run_batch(self, i, cfg, steps, sample_shape, arrays) -> int:
        """Sample batch ``i`` here (``parallel="batch"``) and write its chunks; the window
        calls are cut into the same pieces as in window mode, evaluated one by one."""
        from .batch import call_in_pieces, sample_batch

        n = min(cfg.batch_size, cfg.n_samples - i * cfg.batch_size)

        labels = cfg.batch_labels(i)

        def eps_fn(x, t):
            return call_in_pieces(
                x, t, n, cfg.eval_parts, labels, lambda args: [self.eps(*a) for a in args]
            )

        def run_sequential(steps, x_T, z):
            return self.sequential(steps, x_T, z, labels)

        decode = self.decode if self._decoder_spec is not None else None
        return sample_batch(
            i, cfg, steps, sample_shape, eps_fn, run_sequential, arrays, decode=decode
        )

    def sequential(self, steps, x_T: np.ndarray, z: np.ndarray, labels=None) -> tuple:
        """The sequential sampler on this worker: ``(samples, wall seconds)``; ``labels``
        (n,): the samples' classes (a class-conditional model)."""
        x, _, wall = self._here(
            lambda eps, a, b: (sequential(eps, steps, a, b), None), x_T, z, labels
        )
        return x, wall

    def picard(self, steps, x_T: np.ndarray, z: np.ndarray, window: int, tol: float,
               options: dict | None = None, labels=None) -> tuple:  # fmt: skip
        """Sliding-window Picard iteration run wholly on this worker, its arrays on the
        replica's device (one call, no round trip per iteration; the counterpart of
        :meth:`sequential`). ``options``: keyword arguments of
        :func:`tilegraph.tasks.picard.samplers.picard` (``guard``, ``secant``, ...).

        Returns
        -------
        tuple
            ``(samples (n, *sample_shape), iterations, model evaluations, wall seconds)``.
        """

        def run(eps, a, b):
            r = picard(eps, steps, a, b, window, tol, **(options or {}))
            return r.x, r

        x, r, wall = self._here(run, x_T, z, labels)
        return x, r.iterations, r.model_evals, wall

    def _here(self, run, x_T, z, labels) -> tuple:
        """``run(eps, x_T, z) -> (samples, info)`` on this replica's device with
        deterministic BLAS: ``(samples on the host, info, wall seconds)``, the copy to
        the host timed (it waits for the device)."""
        xp = self._xp

        def eps(x, t):
            return self._eps(x, t, labels)

        with deterministic_blas():
            x_T, z = xp.asarray(_local(x_T)), xp.asarray(_local(z))
            t0 = time.perf_counter()
            try:
                x, info = run(eps, x_T, z)
            except ModelOutputError as exc:
                raise exc.naming(self.label) from None
            x = to_host(x)
            return x, info, time.perf_counter() - t0
