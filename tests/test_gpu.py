"""Multi-GPU nodes: one Dask worker per GPU (``local-cuda``), Ray actors holding one GPU
each, and the pipelines' CuPy paths against their NumPy answers. Marked ``gpu``: skipped
where CuPy sees no CUDA device (``benchmarks/gpu_check.py`` runs the same pipelines on a
GPU machine and prints CPU-vs-GPU times)."""

import os

import numpy as np
import pytest
from tilegraph import cluster

pytestmark = pytest.mark.gpu


class DeviceHolder:
    """A stateful worker that keeps an array on its GPU."""

    def __init__(self, n):
        import cupy

        self.x = cupy.arange(n, dtype=cupy.float64)

    def where(self):
        import cupy

        return int(cupy.cuda.runtime.getDevice()), os.environ.get("CUDA_VISIBLE_DEVICES")

    def total(self):
        return float(self.x.sum())


def _gpu_square(n):
    import cupy

    return float((cupy.arange(n, dtype=cupy.float64) ** 2).sum())


@pytest.mark.parametrize("spec", ["local-cuda", "ray"])
def test_one_gpu_per_stateful_worker(spec):
    pytest.importorskip("dask_cuda" if spec == "local-cuda" else "ray")
    with cluster.connect(spec) as ex:
        n = ex.n_gpus
        assert n >= 1
        actors = [ex.actor(DeviceHolder, 1000, gpus=1, spread=k) for k in range(n)]
        assert ex.gather([a.total() for a in actors]) == [499500.0] * n
        got = ex.gather(ex.map(_gpu_square, [10] * n, gpus=1))
        assert got == [285.0] * n
        if n > 1:  # each actor sees a different device
            seen = {a.where().result() for a in actors}
            assert len(seen) == n


def _on_cpu_and_gpu(tmp_path, name: str, *sets: str) -> dict:
    """``tilegraph run NAME --preset quick`` with ``device=cpu`` and ``device=cuda``
    (plus ``--set`` items) on ``sync``: the ``--json`` record of each, by device."""
    from helpers import last_json, tilegraph

    out = {}
    for device in ("cpu", "cuda"):
        args = [f"--set={s}" for s in (f"device={device}", *sets)]
        run = tilegraph(
            "run", name, "--preset", "quick", *args,
            "--cluster", "sync", "--store", str(tmp_path), "--json",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        out[device] = last_json(run.stdout)
    return out


def test_picard_quick_on_the_gpu_matches_the_cpu(tmp_path):
    outs = {k: v["metrics"] for k, v in _on_cpu_and_gpu(tmp_path, "picard").items()}
    assert outs["cuda"]["iterations"] == outs["cpu"]["iterations"]
    np.testing.assert_allclose(
        outs["cuda"]["max_abs_diff_vs_sequential"], outs["cpu"]["max_abs_diff_vs_sequential"],
        atol=1e-6,
    )  # fmt: skip


def test_domain_split_quick_on_the_gpu_matches_the_cpu(tmp_path):
    outs = {k: v["metrics"] for k, v in _on_cpu_and_gpu(tmp_path, "domain-split").items()}
    assert outs["cuda"]["converged"]
    assert outs["cuda"]["rel_error_direct"] <= 1e-10
    assert outs["cuda"]["iterations"] == outs["cpu"]["iterations"]


def test_bilevel_quick_on_the_gpu_matches_the_cpu(tmp_path):
    outs = {k: v["metrics"] for k, v in _on_cpu_and_gpu(tmp_path, "bilevel").items()}
    assert outs["cuda"]["converged"]
    assert outs["cuda"]["iterations"] == outs["cpu"]["iterations"]
    for key in ("rel_dist_to_optimum", "grad_norm", "upper_objective"):
        np.testing.assert_allclose(outs["cuda"][key], outs["cpu"][key], rtol=1e-9)


@pytest.mark.parametrize("schedule", ["subtrees", "nodes"])
def test_ttn_quick_on_the_gpu_matches_the_cpu(tmp_path, schedule):
    import xarray as xr

    res = _on_cpu_and_gpu(tmp_path, "ttn", f"schedule={schedule}")
    outs = {k: v["metrics"] for k, v in res.items()}
    hist = {
        k: xr.open_zarr(v["path"] + "/history", consolidated=False).load() for k, v in res.items()
    }
    assert outs["cuda"]["steps"] == outs["cpu"]["steps"] == 20
    assert outs["cuda"]["max_rank"] == outs["cpu"]["max_rank"]
    assert outs["cuda"]["final_error_vs_exact"] < 2e-2
    a, b = hist["cuda"], hist["cpu"]
    np.testing.assert_array_equal(a.ranks.values, b.ranks.values)
    for var in ("norm", "energy", "magnetization", "error"):
        np.testing.assert_allclose(a[var].values, b[var].values, rtol=0, atol=1e-10)


def test_torch_models_take_cupy_samples_without_a_copy():
    """A torch network on the GPU evaluates CuPy samples through DLPack (the tensor it
    gets shares the CuPy buffer), returns CuPy, and agrees with its CPU evaluation; a
    diffusers pipeline directory runs with device=cuda and matches device=cpu."""
    torch = pytest.importorskip("torch")
    cupy = pytest.importorskip("cupy")
    from tilegraph.tasks.picard.schedules import make_schedule
    from tilegraph.tasks.picard.torch_models import TorchDenoiser

    seen = {}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, x, t):
            seen["ptr"] = x.data_ptr()
            return self.w * x + t[:, None, None, None].to(x.dtype) / 1000

    abar = make_schedule("linear", 1000)
    x = cupy.random.default_rng(0).standard_normal((6, 1, 4, 4), dtype=cupy.float32)
    t = cupy.arange(6, dtype=cupy.int64) * 100
    gpu = TorchDenoiser(Net(), abar, (1, 4, 4), device="cuda")
    out = gpu.eps(x, t)
    assert isinstance(out, cupy.ndarray) and seen["ptr"] == x.data.ptr
    cpu = TorchDenoiser(Net(), abar, (1, 4, 4)).eps(cupy.asnumpy(x), cupy.asnumpy(t))
    np.testing.assert_allclose(cupy.asnumpy(out), cpu, rtol=1e-6)


def test_a_diffusers_directory_on_the_gpu_matches_the_cpu(tmp_path):
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from helpers import last_json, tilegraph

    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(
        str(tmp_path / "pipe")
    )
    got = {}
    for device, spec in (("cpu", "local:1"), ("cuda", "local-cuda")):
        run = tilegraph(
            "run", "picard", "--set", "model=diffusers", "--set",
            f"diffusers.path={tmp_path / 'pipe'}", "--set", "steps=50", "--set", "window=8",
            "--set", "n_samples=4", "--set", "batch_size=4", "--set", "dtype=float32",
            "--set", f"device={device}", "--cluster", spec,
            "--store", str(tmp_path / device), "--json", timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        got[device] = last_json(run.stdout)["metrics"]
    assert got["cuda"]["iterations"] == got["cpu"]["iterations"]
    assert (
        abs(got["cuda"]["max_abs_diff_vs_sequential"] - got["cpu"]["max_abs_diff_vs_sequential"])
        < 1e-3
    )


def test_latents_decoded_on_the_gpu_match_the_cpu():
    """A latent-diffusion directory's autoencoder on the GPU: CuPy latents in, CuPy
    images out (through DLPack), as the CPU decodes them."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    cupy = pytest.importorskip("cupy")
    from tilegraph.tasks.picard.torch_models import LatentDecoder

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
    )  # fmt: skip
    z = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    cpu = LatentDecoder(vae, 0.18215)(z)
    got = LatentDecoder(vae, 0.18215, device="cuda")(cupy.asarray(z))
    assert isinstance(got, cupy.ndarray) and got.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(cupy.asnumpy(got), cpu, atol=1e-4)
