"""picard on PyTorch models: diffusers pipeline directories and torch modules, checked
against diffusers' own schedulers (same start and noise)."""

import numpy as np
import pytest
import xarray as xr
from helpers import last_json, tilegraph

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from tilegraph.tasks.picard.samplers import draw_noise, picard, sequential  # noqa: E402
from tilegraph.tasks.picard.schedules import make_schedule, make_steps  # noqa: E402
from tilegraph.tasks.picard.torch_models import TorchDenoiser  # noqa: E402

SHAPE = (1, 8, 8)


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip


def steps_kw(sched):
    sc = sched.config
    return sc.timestep_spacing, sc.clip_sample_range if sc.clip_sample else None


def our_steps(sched, kind, T):
    sc = sched.config
    abar = make_schedule(sc.beta_schedule, sc.num_train_timesteps, sc.beta_start, sc.beta_end)
    kw = {"final_one": sc.set_alpha_to_one} if kind == "ddim" else {}
    spacing, clip = steps_kw(sched)
    steps = make_steps(kind, abar, T, spacing=spacing, offset=sc.steps_offset, clip=clip, **kw)
    return abar, steps


def diffusers_loop(net, sched, x_T, kind, seed=1):
    """diffusers' sequential scheduler loop from x_T; DDPM's step draws its noise from a
    generator: each draw is replayed first and returned, shape (T, *x_T.shape)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(x_T.copy())
    zs = []
    with torch.inference_mode():
        for t in sched.timesteps:
            out = net(x, t).sample
            state = gen.get_state()
            zs.append(torch.randn(x.shape, generator=gen).numpy())
            gen.set_state(state)
            if kind == "ddim":
                x = sched.step(out, t, x, eta=0.0).prev_sample
            else:
                x = sched.step(out, t, x, generator=gen).prev_sample
    return x.numpy(), np.stack(zs)


@pytest.mark.parametrize(
    "kind, kw, atol",
    [
        ("ddpm", {}, 1e-5),  # the DDPMScheduler defaults: linear, clip_sample at 1, leading
        (
            "ddpm",
            {
                "timestep_spacing": "linspace",
                "clip_sample_range": 0.5,
                "prediction_type": "v_prediction",
            },
            1e-5,
        ),  # fmt: skip
        (
            "ddim",
            {
                "timestep_spacing": "trailing",
                "prediction_type": "v_prediction",
                "beta_schedule": "scaled_linear",
                "beta_start": 0.00085,
                "beta_end": 0.012,
            },
            1e-5,
        ),
        # cosine ends at abar = 2.4e-9 with x0_hat clipped: the linear step form cancels
        # terms of size 1/sqrt(abar) = 2e4 in float32 (2e-5 off diffusers' x0 form)
        (
            "ddim",
            {
                "timestep_spacing": "leading",
                "steps_offset": 1,
                "set_alpha_to_one": False,
                "beta_schedule": "squaredcos_cap_v2",
            },
            5e-5,
        ),  # fmt: skip
    ],
)
def test_sequential_matches_diffusers_scheduler_loop(kind, kw, atol):
    cls = diffusers.DDPMScheduler if kind == "ddpm" else diffusers.DDIMScheduler
    sched = cls(**kw)
    T, n = 20, 3
    abar, steps = our_steps(sched, kind, T)
    np.testing.assert_allclose(abar, sched.alphas_cumprod.numpy(), rtol=1e-6, atol=1e-9)  # float32
    sched.set_timesteps(T)
    np.testing.assert_array_equal(sched.timesteps.numpy(), steps.t)
    # the samplers compared on diffusers' own (float32) alphas_cumprod
    abar = sched.alphas_cumprod.numpy().astype(np.float64)
    kw = {"final_one": sched.config.set_alpha_to_one} if kind == "ddim" else {}
    steps = make_steps(kind, abar, T, spacing=steps_kw(sched)[0], offset=sched.config.steps_offset,
                       clip=steps_kw(sched)[1], **kw)  # fmt: skip
    net = tiny_unet()
    x_T = draw_noise(np.random.SeedSequence(1), n, SHAPE, T)[0].astype(np.float32)
    ref, z = diffusers_loop(net, sched, x_T, kind)
    model = TorchDenoiser(net, abar, SHAPE, prediction_type=sched.config.prediction_type)
    ours = sequential(model.eps, steps, x_T, z)
    assert np.abs(ref).max() > 0.1  # not a trivial sample
    np.testing.assert_allclose(ours, ref, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def ddim_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "ddim"
    # v-prediction: with epsilon prediction, clip_sample and this random network the DDIM
    # trajectory is so ill-conditioned that diffusers' own float32 and float64 loops end
    # 3e-3 apart (x0_hat = (x - sqrt(1 - abar) eps) / sqrt(abar) at abar = 4e-5)
    sched = diffusers.DDIMScheduler(timestep_spacing="trailing", prediction_type="v_prediction")
    diffusers.DDIMPipeline(unet=tiny_unet(), scheduler=sched).save_pretrained(str(path))
    return path


def test_a_diffusers_directory_runs_and_matches_diffusers(tmp_path, ddim_dir):
    """model=diffusers on local:2: the run's sequential samples are diffusers' DDIM loop
    from the same start, and Picard ends within its tolerance of them."""
    T, n = 25, 4
    run = tilegraph(
        "run", "picard", "--set", "model=diffusers", "--set", f"diffusers.path={ddim_dir}",
        "--set", "sampler=ddim", "--set", f"steps={T}", "--set", "window=8",
        "--set", f"n_samples={n}", "--set", f"batch_size={n}", "--set", "dtype=float32",
        "--set", "tol=0.01", "--cluster", "local:2", "--store", str(tmp_path), "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    # loaded in its dtype, not cast after: none of diffusers' warnings on every run
    assert "Casting directly" not in run.stderr and "accelerate" not in run.stderr, run.stderr
    out = last_json(run.stdout)
    res = xr.open_zarr(out["path"] + "/result", consolidated=False).load()
    assert res.samples.dims == ("sample", "channel", "row", "col")
    assert res.samples.shape == (n, *SHAPE)
    sched = diffusers.DDIMScheduler.from_pretrained(str(ddim_dir), subfolder="scheduler")
    sched.set_timesteps(T)
    x_T = draw_noise(np.random.SeedSequence(0, spawn_key=(0,)), n, SHAPE, T)[0]
    net = diffusers.UNet2DModel.from_pretrained(str(ddim_dir), subfolder="unet")
    ref, _ = diffusers_loop(net, sched, x_T.astype(np.float32), "ddim")
    np.testing.assert_allclose(res.sequential.values, ref, atol=2e-5, rtol=0)
    assert out["metrics"]["iterations"] < T
    assert 0 < out["metrics"]["max_abs_diff_vs_sequential"] < 0.05


MODULE = '''
import torch


class Net(torch.nn.Module):
    """A per-pixel MLP of (x, t): any torch module with sample_shape."""

    sample_shape = (2, 3)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        nn = torch.nn
        self.f = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x, t):
        tt = (t.to(x.dtype) / 1000.0)[:, None, None].expand_as(x)
        return self.f(torch.stack([x, tt], dim=-1))[..., 0]


def factory(abar):
    return Net().double()


class Shapeless(torch.nn.Module):
    def forward(self, x, t):
        return x


def shapeless(abar):
    return Shapeless()
'''


def test_a_torch_module_from_a_factory(tmp_path):
    """model=custom returning a torch.nn.Module: wrapped, run on the workers, and its
    sequential samples are the in-process sampler's on the same module."""
    (tmp_path / "mynet.py").write_text(MODULE)
    run = tilegraph(
        "run", "picard", "--set", "model=custom", "--set", "custom=mynet:factory",
        "--set", "steps=40", "--set", "window=10", "--set", "n_samples=6",
        "--set", "batch_size=3", "--set", "tol=1e-3", "--store", str(tmp_path / "runs"),
        "--cluster", "local:2",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = last_json(run.stdout)
    res = xr.open_zarr(out["path"] + "/result", consolidated=False).load()
    import sys

    sys.path.insert(0, str(tmp_path))
    import mynet

    abar = make_schedule("linear", 1000)
    steps = make_steps("ddpm", abar, 40)
    model = TorchDenoiser(mynet.factory(abar), abar, (2, 3), dtype="float64")
    x_T, z = draw_noise(np.random.SeedSequence(0, spawn_key=(1,)), 3, (2, 3), 40)
    np.testing.assert_allclose(res.sequential.values[3:], sequential(model.eps, steps, x_T, z),
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    assert out["metrics"]["max_abs_diff_vs_sequential"] < 0.05


def test_a_torch_module_without_sample_shape_exits_2_before_any_store(tmp_path):
    (tmp_path / "mynet.py").write_text(MODULE)
    store = tmp_path / "runs"
    run = tilegraph("run", "picard", "--set", "model=custom", "--set", "custom=mynet:shapeless",
                    "--store", str(store), cwd=tmp_path)  # fmt: skip
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config field 'custom'"), lines
    assert (
        "the torch module Shapeless that mynet:shapeless returned needs a sample_shape" in lines[0]
    )
    assert not store.exists()


@pytest.mark.parametrize(
    "sets, field",
    [
        (["model=diffusers"], "diffusers.path"),
        (["model=diffusers", "diffusers.path=/nonexistent/dir"], "diffusers.path"),
        (["model=diffusers", "DIR", "train_steps=500"], "train_steps"),
        (["model=diffusers", "DIR", "diffusers.dtype=float8"], "diffusers.dtype"),
    ],
)
def test_bad_diffusers_settings_exit_2(tmp_path, ddim_dir, sets, field):
    sets = [f"diffusers.path={ddim_dir}" if s == "DIR" else s for s in sets]
    args = [a for s in sets for a in ("--set", s)]
    run = tilegraph("run", "picard", *args, "--store", str(tmp_path / "runs"))
    assert run.returncode == 2, run.stderr
    assert field in run.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "kind, prediction, p, tol",
    [
        ("ddpm", "epsilon", 8, 0.1),
        ("ddpm", "epsilon", 32, 0.01),
        ("ddim", "v_prediction", 32, 0.1),
    ],
)
def test_plain_picard_counts_equal_diffusers_paradigms_loop(kind, prediction, p, tol):
    """diffusers' own ParaDiGMS loop (StableDiffusionParadigmsPipeline's, transcribed in
    tasks/picard/paradigms_peer.py) and tilegraph's plain Picard (guard off): the same
    iterations per batch and the same samples, on the same network, start and noise."""
    from tilegraph.tasks.picard.paradigms_peer import paradigms_loop

    cls = diffusers.DDPMParallelScheduler if kind == "ddpm" else diffusers.DDIMParallelScheduler
    sched = cls(prediction_type=prediction)
    T = 100
    sched.set_timesteps(T)
    abar = sched.alphas_cumprod.numpy().astype(np.float64)
    steps = make_steps(kind, abar, T, clip=sched.config.clip_sample_range)
    net = tiny_unet()
    model = TorchDenoiser(net, abar, SHAPE, prediction_type=prediction)
    for seed in range(2):
        x_T, z = draw_noise(np.random.SeedSequence(seed), 4, SHAPE, T)
        x_T, z = x_T.astype(np.float32), z.astype(np.float32)
        theirs, their_its = paradigms_loop(net, sched, x_T, z, p, tol)
        ours = picard(model.eps, steps, x_T, z, p, tol)
        assert abs(ours.iterations - their_its) <= 1, (ours.iterations, their_its)
        assert ours.iterations < T // 2
        np.testing.assert_allclose(ours.x, theirs, atol=1e-4, rtol=0)


def _multistep_matches_diffusers_on_a_unet(cls, kind, kw, T, atol):
    """tilegraph's sequential ``kind`` sampler against diffusers' scheduler ``cls`` loop
    (``kw``, ``T`` steps) on a random UNet in float32: the same timesteps, the samples
    within ``atol``."""
    sched = getattr(diffusers, cls)(**kw)
    sched.set_timesteps(T)
    sc = sched.config
    abar = make_schedule(sc.beta_schedule, sc.num_train_timesteps, sc.beta_start, sc.beta_end)
    st = make_steps(kind, abar, T, spacing=sc.timestep_spacing, karras=sc.use_karras_sigmas)
    np.testing.assert_array_equal(sched.timesteps.numpy(), st.t)
    net = tiny_unet()
    x_T = draw_noise(np.random.SeedSequence(1), 3, SHAPE, T)[0].astype(np.float32)
    x = torch.from_numpy(x_T.copy())
    with torch.inference_mode():
        for t in sched.timesteps:
            x = sched.step(net(x, t).sample, t, x).prev_sample
    model = TorchDenoiser(net, abar, SHAPE, prediction_type=sc.prediction_type)
    ours = sequential(model.eps, st, x_T, np.zeros((T, 3, *SHAPE), np.float32))
    assert np.abs(x.numpy()).max() > 0.1
    np.testing.assert_allclose(ours, x.numpy(), atol=atol, rtol=0)


@pytest.mark.parametrize(
    "kw, T, atol",
    [
        ({"timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 10, 1e-5),
        ({"timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 20, 1e-5),
        # the defaults (linear betas, epsilon): diffusers computes every DPM update in
        # float32 whatever the input (scheduling_dpmsolver_multistep.py, step:
        # sample.to(torch.float32)), and x0_hat = (x - sigma eps) / alpha at alpha = 6e-3
        # amplifies its rounding: its float32 loop ends 1.4e-4 from the float64 solution
        ({}, 20, 3e-4),
        # "DPM++ 2M Karras" (Karras noise levels, the model at the nearest timestep) on
        # Stable Diffusion's schedule (this random network's samples reach 31 there: 1e-4
        # is diffusers' float32 rounding, 1.1e-6 relative) and on the linear one (its
        # float32 loop, as above)
        (
            {
                "use_karras_sigmas": True,
                "beta_schedule": "scaled_linear",
                "beta_start": 0.00085,
                "beta_end": 0.012,
            },
            25,
            1e-4,
        ),
        ({"use_karras_sigmas": True}, 20, 3e-4),
    ],
)
def test_dpm_solver_matches_diffusers_multistep_scheduler(kw, T, atol):
    _multistep_matches_diffusers_on_a_unet("DPMSolverMultistepScheduler", "dpmpp2m", kw, T, atol)


def _unipc_float64_loop(sched, eps_fn, x_T):
    """diffusers' UniPCMultistepScheduler loop in float64 from ``x_T`` (n, d): its noise
    levels, rounded to float32 by ``set_timesteps``, recomputed in float64 from
    ``alphas_cumprod`` (Karras levels kept as they are)."""
    if not sched.config.use_karras_sigmas:
        ab = sched.alphas_cumprod.double()[sched.timesteps]
        sched.sigmas = torch.cat([((1 - ab) / ab) ** 0.5, torch.zeros(1, dtype=ab.dtype)])
    else:
        sched.sigmas = sched.sigmas.double()
    x = torch.from_numpy(x_T.copy())
    for t in sched.timesteps:
        e = torch.from_numpy(eps_fn(x.numpy()[None], np.array([int(t)]))[0])
        x = sched.step(e, t, x).prev_sample
    return x.numpy()


@pytest.mark.parametrize(
    "kw, T, atol",
    [
        ({}, 10, 1e-12),
        ({}, 25, 1e-12),
        ({"timestep_spacing": "trailing"}, 12, 1e-12),
        ({"timestep_spacing": "leading", "steps_offset": 1}, 15, 1e-12),
        # Karras levels: diffusers' are float32 (set_timesteps), tilegraph's float64
        (
            {
                "use_karras_sigmas": True,
                "beta_schedule": "scaled_linear",
                "beta_start": 0.00085,
                "beta_end": 0.012,
            },
            20,
            1e-7,
        ),  # fmt: skip
    ],
)
def test_unipc_is_diffusers_unipc_in_float64(kw, T, atol):
    """sampler=unipc's sequential sampler against diffusers' UniPCMultistepScheduler
    (UniPC-2, bh2, with the corrector) run in float64 on a smooth model: the same
    timesteps, and the same samples to rounding; Picard (window 4, tiny tol) to the
    same answer."""
    W = np.random.default_rng(0).normal(size=(6, 6)) * 0.3

    def eps_fn(x, t):
        tt = np.asarray(t, dtype=np.float64).reshape((-1,) + (1,) * (x.ndim - 1))
        return np.tanh(x @ W) * (0.5 + tt / 2000.0)

    torch_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # diffusers' solver constants in float64
    try:
        sched = diffusers.UniPCMultistepScheduler(**kw)
        sched.set_timesteps(T)
        x_T = np.random.default_rng(1).normal(size=(3, 6))
        theirs = _unipc_float64_loop(sched, eps_fn, x_T)
    finally:
        torch.set_default_dtype(torch_dtype)
    sc = sched.config
    abar = sched.alphas_cumprod.double().numpy()  # both on diffusers' float32 schedule
    st = make_steps("unipc", abar, T, spacing=sc.timestep_spacing, offset=sc.steps_offset,
                    karras=sc.use_karras_sigmas)  # fmt: skip
    np.testing.assert_array_equal(sched.timesteps.numpy(), st.t)
    z = np.zeros((T, 3, 6))
    ours = sequential(eps_fn, st, x_T, z)
    assert np.abs(theirs).max() > 0.1 and np.abs(theirs - x_T).max() > 0.1
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=0)
    np.testing.assert_allclose(picard(eps_fn, st, x_T, z, 4, 1e-12).x, ours, atol=1e-11)


@pytest.mark.parametrize(
    "kw, T, atol",
    [
        ({}, 20, 3e-4),
        ({"timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 10, 1e-5),
        (
            {
                "use_karras_sigmas": True,
                "beta_schedule": "scaled_linear",
                "beta_start": 0.00085,
                "beta_end": 0.012,
            },
            25,
            1e-4,
        ),  # fmt: skip
    ],
)
def test_unipc_matches_diffusers_on_a_unet(kw, T, atol):
    """The same on a random UNet in float32, as a user runs diffusers' loop (float32
    rounding: with the defaults this network's samples reach 480, and 3e-4 is 6e-7 of
    that)."""
    _multistep_matches_diffusers_on_a_unet("UniPCMultistepScheduler", "unipc", kw, T, atol)


def test_digits_unet_trains_once_and_is_reused(tmp_path):
    """The digits-unet preset (a few Adam steps here): the UNet is trained by the run,
    stored in it, sampled by the replicas, reused by a resumed run and by another run
    (weights_from); the samples are images and the sequential sampler is the in-process
    one on the stored weights."""
    short = ["--set", "digits_unet.iterations=30", "--set", "n_samples=4", "--set",
             "batch_size=2", "--set", "steps=20", "--set", "window=8"]  # fmt: skip
    run = tilegraph("run", "picard", "--preset", "digits-unet", *short, "--cluster", "local:2",
                    "--store", str(tmp_path / "a"), "--json", timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = last_json(run.stdout)
    m = out["metrics"]
    assert np.isfinite(m["train_loss"]) and m["train_loss"] < 1.5
    res = xr.open_zarr(out["path"] + "/result", consolidated=False).load()
    assert res.samples.dims == ("sample", "channel", "row", "col")
    assert res.samples.shape == (4, 1, 8, 8)
    import zarr
    from tilegraph.tasks.picard.unet_training import build_unet

    group = zarr.open_group(out["path"] + "/model", mode="r")
    attrs = dict(group.attrs)
    weights = {n: np.asarray(group[f"p{i}"][...]).reshape(attrs["shapes"][i])
               for i, n in enumerate(attrs["names"])}  # fmt: skip
    net = build_unet(attrs["config"], weights)
    abar = make_schedule("linear", 1000)
    st = make_steps("ddim", abar, 20)
    model = TorchDenoiser(net, abar, SHAPE)
    x_T, z = draw_noise(np.random.SeedSequence(0, spawn_key=(1,)), 2, SHAPE, 20)
    ref = sequential(model.eps, st, x_T.astype(np.float32), z.astype(np.float32))
    np.testing.assert_allclose(res.sequential.values[2:], ref, atol=1e-5, rtol=1e-6)
    # another run (in one process: only the reuse is checked here) takes the weights:
    # no training, the same train_loss
    again = tilegraph("run", "picard", "--preset", "digits-unet", *short, "--set",
                      f"digits_unet.weights_from={out['path']}", "--cluster", "sync",
                      "--store", str(tmp_path / "b"), "--json", timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert last_json(again.stdout)["metrics"]["train_loss"] == m["train_loss"]


def test_a_pipeline_directory_behind_an_fsspec_url(tmp_path, ddim_dir):
    """diffusers.path may be an fsspec URL (here memory://, in this process on sync):
    the directory is copied to the machine once and gives the local directory's bits."""
    import fsspec
    import tilegraph as tg

    fsspec.filesystem("memory").put(str(ddim_dir) + "/", "/tg-test-pipe/", recursive=True)
    sets = ["sampler=ddim", "steps=10", "window=4", "n_samples=2", "batch_size=2",
            "dtype=float32", "model=diffusers"]  # fmt: skip
    a = tg.run("picard", sets=[*sets, "diffusers.path=memory://tg-test-pipe"], cluster="sync",
               store=str(tmp_path / "a"))  # fmt: skip
    b = tg.run("picard", sets=[*sets, f"diffusers.path={ddim_dir}"], cluster="sync",
               store=str(tmp_path / "b"))  # fmt: skip
    xa = xr.open_zarr(a.url + "/result", consolidated=False).samples.values
    xb = xr.open_zarr(b.url + "/result", consolidated=False).samples.values
    np.testing.assert_array_equal(xa, xb)


def test_classifier_free_guidance_matches_the_diffusers_recipe(tmp_path, ddim_dir):
    """A class-conditional UNet2DModel (3 classes + the null class 3): the run's
    sequential samples are diffusers' DDIM loop with the guided prediction computed the
    usual way (conditional and unconditional halves in one call), Picard ends near them,
    and the classes are kept with the samples."""
    torch.manual_seed(1)
    net = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, num_class_embeds=4,
    )  # fmt: skip
    sched = diffusers.DDIMScheduler(timestep_spacing="trailing", prediction_type="v_prediction")
    path = tmp_path / "cond"
    diffusers.DDIMPipeline(unet=net, scheduler=sched).save_pretrained(str(path))
    T, n, scale = 20, 4, 3.0
    run = tilegraph(
        "run", "picard", "--set", "model=diffusers", "--set", f"diffusers.path={path}",
        "--set", "sampler=ddim", "--set", f"steps={T}", "--set", "window=8",
        "--set", f"n_samples={n}", "--set", f"batch_size={n}", "--set", "dtype=float32",
        "--set", "tol=0.01", "--set", "class_labels=[0, 1, 2]",
        "--set", f"guidance_scale={scale}", "--cluster", "local:2",
        "--store", str(tmp_path / "runs"), "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = last_json(run.stdout)
    res = xr.open_zarr(out["path"] + "/result", consolidated=False).load()
    np.testing.assert_array_equal(res.label.values, [0, 1, 2, 0])
    sched.set_timesteps(T)
    x = torch.from_numpy(
        draw_noise(np.random.SeedSequence(0, spawn_key=(0,)), n, SHAPE, T)[0].astype(np.float32)
    )
    labels = torch.tensor([0, 1, 2, 0])
    with torch.inference_mode():
        for t in sched.timesteps:
            both = net(
                torch.cat([x, x]), t, class_labels=torch.cat([labels, torch.full_like(labels, 3)])
            ).sample
            cond, uncond = both[:n], both[n:]
            x = sched.step(uncond + scale * (cond - uncond), t, x, eta=0.0).prev_sample
    np.testing.assert_allclose(res.sequential.values, x.numpy(), atol=2e-5, rtol=0)
    assert out["metrics"]["max_abs_diff_vs_sequential"] < 0.05
    bad = tilegraph("run", "picard", "--set", "model=diffusers", "--set",
                    f"diffusers.path={ddim_dir}", "--set", "class_labels=[0]",
                    "--set", "sampler=ddim", "--set", "steps=20", "--set", "window=8",
                    "--store", str(tmp_path / "bad"))  # fmt: skip
    assert bad.returncode == 2 and "class_labels" in bad.stderr.strip().splitlines()[-1]
    bad = tilegraph("run", "picard", "--set", "guidance_scale=3", "--store", str(tmp_path / "b"))
    assert bad.returncode == 2 and "guidance_scale" in bad.stderr.strip().splitlines()[-1]


def test_a_cross_attention_unet_with_conditioning_from_zarr(tmp_path):
    """A UNet2DConditionModel conditioned on rows of a Zarr array (sample i on row i mod
    K), guided against the stored unconditional embedding: the run's sequential samples
    are diffusers' DDIM loop with the guided prediction computed the usual way."""
    import zarr

    torch.manual_seed(2)
    net = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=4,
        cross_attention_dim=8, attention_head_dim=2,
    )  # fmt: skip
    sched = diffusers.DDIMScheduler(timestep_spacing="trailing", prediction_type="v_prediction")
    path = tmp_path / "xattn"
    diffusers.DDIMPipeline(unet=net, scheduler=sched).save_pretrained(str(path))
    rng = np.random.default_rng(0)
    cond, uncond = rng.normal(size=(3, 5, 8)), rng.normal(size=(5, 8))
    g = zarr.open_group(str(tmp_path / "cond.zarr"), mode="w")
    g.create_array("cond", data=cond.astype(np.float32))
    g.create_array("uncond", data=uncond.astype(np.float32))
    T, n, scale = 20, 4, 2.5
    run = tilegraph(
        "run", "picard", "--set", "model=diffusers", "--set", f"diffusers.path={path}",
        "--set", "sampler=ddim", "--set", f"steps={T}", "--set", "window=8",
        "--set", f"n_samples={n}", "--set", f"batch_size={n}", "--set", "dtype=float32",
        "--set", "tol=0.01", "--set", f"conditioning={tmp_path / 'cond.zarr'}",
        "--set", f"guidance_scale={scale}", "--store", str(tmp_path / "runs"), "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = last_json(run.stdout)
    res = xr.open_zarr(out["path"] + "/result", consolidated=False).load()
    np.testing.assert_array_equal(res.label.values, [0, 1, 2, 0])
    sched.set_timesteps(T)
    x = torch.from_numpy(
        draw_noise(np.random.SeedSequence(0, spawn_key=(0,)), n, SHAPE, T)[0].astype(np.float32)
    )
    c = torch.from_numpy(cond.astype(np.float32))[[0, 1, 2, 0]]
    u = torch.from_numpy(uncond.astype(np.float32))[None].expand_as(c)
    with torch.inference_mode():
        for t in sched.timesteps:
            both = net(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([c, u])).sample
            x = sched.step(both[n:] + scale * (both[:n] - both[n:]), t, x, eta=0.0).prev_sample
    np.testing.assert_allclose(res.sequential.values, x.numpy(), atol=2e-5, rtol=0)
    assert out["metrics"]["max_abs_diff_vs_sequential"] < 0.05
    bad = tilegraph("run", "picard", "--set", "model=diffusers", "--set",
                    f"diffusers.path={path}", "--set", "sampler=ddim", "--set", "steps=20",
                    "--set", "window=8", "--store", str(tmp_path / "bad"))  # fmt: skip
    assert bad.returncode == 2 and "conditioning" in bad.stderr.strip().splitlines()[-1]


def test_an_unsupported_network_exits_2_before_anything_is_written(tmp_path, ddim_dir):
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(ddim_dir, other)
    conf = other / "unet" / "config.json"
    conf.write_text(json.dumps({**json.loads(conf.read_text()), "_class_name": "VQModel"}))
    run = tilegraph("run", "picard", "--set", "model=diffusers", "--set",
                    f"diffusers.path={other}", "--store", str(tmp_path / "runs"))  # fmt: skip
    assert run.returncode == 2 and "VQModel" in run.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs").exists()


class _Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(6, 6)

    def forward(self, x, t):
        return self.lin(x.reshape(-1, 6)).reshape(x.shape)


def test_the_callers_module_is_not_cast_in_place():
    """The adapter evaluates a float32, eval-mode copy; the module passed in keeps its
    precision and training mode, and both give the same prediction."""
    abar = make_schedule("linear", 50)
    net = _Affine()
    net = net.to(torch.float64).train()
    model = TorchDenoiser(net, abar, (2, 3), dtype="float32")
    assert net.training and next(net.parameters()).dtype == torch.float64
    assert not model.net.training and next(model.net.parameters()).dtype == torch.float32
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    t = np.array([3, 10, 20, 40])
    with torch.no_grad():
        want = net(torch.as_tensor(x), None).numpy()
    np.testing.assert_allclose(model.eps(x, t), want, rtol=1e-5, atol=1e-5)


def test_a_directory_loads_in_the_requested_dtype_and_is_used_as_it_is(ddim_dir):
    """load_unet casts while loading (diffusers' way); the adapter then neither copies
    nor casts a module that is already in its dtype, on its device, in eval mode."""
    from tilegraph.tasks.picard.torch_models import load_unet

    net = load_unet(ddim_dir, "UNet2DModel", "bfloat16")
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}
    model = TorchDenoiser(net, make_schedule("linear", 1000), SHAPE, dtype="bfloat16")
    assert model.net is net
    x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)
    out = model.eps(x, np.array([10, 500]))
    assert out.dtype == np.float32 and out.shape == x.shape and np.all(np.isfinite(out))


def tiny_autoencoder(cls, latent_channels, seed, **kw):
    """A two-block autoencoder (its decoder upsamples 8x8 latents to 16x16 RGB)."""
    torch.manual_seed(seed)
    if cls is diffusers.VQModel:
        kw.setdefault("num_vq_embeddings", 16)
    return cls(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
        latent_channels=latent_channels, norm_num_groups=4, sample_size=16, **kw,
    )  # fmt: skip


def latent_unet(channels):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip


@pytest.fixture(scope="module")
def latent_dirs(tmp_path_factory):
    """Latent-diffusion directories: LDM's own (``LDMPipeline``: a ``VQModel`` in
    ``vqvae/`` quantizing latents of 2 channels, its vq_embed_dim, not its 3
    latent_channels) and a DDIM pipeline with an ``AutoencoderKL`` in ``vae/`` (4 latent
    channels, as Stable Diffusion's; scaling_factor 0.5), listed in model_index.json."""
    import json

    root = tmp_path_factory.mktemp("latent")
    sched = diffusers.DDIMScheduler(prediction_type="v_prediction")
    vq = tiny_autoencoder(diffusers.VQModel, 3, seed=1, vq_embed_dim=2)
    diffusers.LDMPipeline(vqvae=vq, unet=latent_unet(2), scheduler=sched).save_pretrained(
        str(root / "vqvae")
    )
    kl = root / "vae"
    diffusers.DDIMPipeline(unet=latent_unet(4), scheduler=sched).save_pretrained(str(kl))
    vae = tiny_autoencoder(diffusers.AutoencoderKL, 4, seed=2, scaling_factor=0.5)
    vae.save_pretrained(str(kl / "vae"))
    index = json.loads((kl / "model_index.json").read_text())
    (kl / "model_index.json").write_text(
        json.dumps({**index, "vae": ["diffusers", "AutoencoderKL"]})
    )
    return {"vqvae": root / "vqvae", "vae": root / "vae"}


def _decoded(directory, sub, latents):
    """diffusers' own decode, as its LDM and Stable Diffusion pipelines post-process."""
    cls = diffusers.VQModel if sub == "vqvae" else diffusers.AutoencoderKL
    ae = cls.from_pretrained(str(directory), subfolder=sub)
    with torch.inference_mode():
        z = torch.from_numpy(np.asarray(latents, dtype=np.float32)) / ae.config.scaling_factor
        return (ae.decode(z).sample / 2 + 0.5).clamp(0, 1).numpy()


@pytest.mark.parametrize(
    "sub, cluster, parallel", [("vqvae", "sync", "window"), ("vae", "local:2", "batch")]
)
def test_a_latent_diffusion_directory_is_decoded_as_diffusers_decodes(
    tmp_path, latent_dirs, sub, cluster, parallel
):
    """The samples of a latent-diffusion directory are latents; the run decodes them (and
    the sequential ones) with the directory's autoencoder, on the replicas, into images
    in [0, 1] that are diffusers' decode of the stored latents; summary.png shows them."""
    n = 4
    run = tilegraph(
        "run", "picard", "--set", "model=diffusers", "--set",
        f"diffusers.path={latent_dirs[sub]}", "--set", "sampler=ddim", "--set", "steps=10",
        "--set", "window=4", "--set", f"n_samples={n}", "--set", "batch_size=2", "--set",
        f"parallel={parallel}", "--cluster", cluster, "--store", str(tmp_path), "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Casting directly" not in run.stderr, run.stderr  # loaded in its dtype
    out = last_json(run.stdout)
    res = xr.open_zarr(out["path"] + "/result", consolidated=False).load()
    channels = 2 if sub == "vqvae" else 4
    assert res.samples.shape == (n, channels, 8, 8)
    assert res.image.dims == ("sample", "image_channel", "image_row", "image_col")
    assert res.image.shape == (n, 3, 16, 16) and res.sequential_image.shape == (n, 3, 16, 16)
    img = res.image.values
    assert 0 <= img.min() and img.max() <= 1 and img.std() > 0.01  # not a constant image
    # float32 decodes, here and on the replica (single-threaded BLAS there): 1.3e-6 apart
    # in one CI run
    np.testing.assert_allclose(img, _decoded(latent_dirs[sub], sub, res.samples), atol=1e-5)
    np.testing.assert_allclose(
        res.sequential_image.values, _decoded(latent_dirs[sub], sub, res.sequential), atol=1e-5
    )
    assert (tmp_path / "picard" / out["run_id"] / "summary.png").stat().st_size > 0


@pytest.mark.parametrize("sets", [["diffusers.decode=false"], ["compare_sequential=false"]])
def test_decode_false_keeps_the_latents_only(tmp_path, latent_dirs, sets):
    """decode=false: latents only; compare_sequential=false: the Picard images only."""
    from helpers import run_cli

    rc, stdout, err = run_cli(
        "run", "picard", "--set", "model=diffusers", "--set",
        f"diffusers.path={latent_dirs['vae']}", *(a for s in sets for a in ("--set", s)),
        "--set", "steps=5", "--set", "window=5", "--set", "n_samples=2", "--set",
        "batch_size=2", "--cluster", "sync", "--store", str(tmp_path), "--json",
    )  # fmt: skip
    assert rc == 0, err
    out = last_json(stdout)
    res = xr.open_zarr(out["path"] + "/result", consolidated=False)
    assert "samples" in res and "sequential_image" not in res
    if sets == ["diffusers.decode=false"]:
        assert "image" not in res
    else:
        assert "sequential" not in res and res.image.shape == (2, 3, 16, 16)
        want = _decoded(latent_dirs["vae"], "vae", res.samples.values)
        np.testing.assert_allclose(res.image.values, want, atol=1e-5)
    assert (tmp_path / "picard" / out["run_id"] / "summary.png").stat().st_size > 0


def _refused(tmp_path, sets) -> str:
    """``tilegraph run picard --set ...`` exits 2 with one line and writes no store:
    that line."""
    from helpers import run_cli

    args = [a for s in sets for a in ("--set", s)]
    rc, _, err = run_cli("run", "picard", *args, "--store", str(tmp_path / "runs"))
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert not (tmp_path / "runs").exists()
    return lines[0]


def _edit_json(path, **changes):
    import json

    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "case, field, needle",
    [
        ("pixels", "diffusers.decode", "lists no autoencoder (vae or vqvae)"),
        ("tiny-vae", "diffusers.decode", "holds a AutoencoderTiny; tilegraph decodes with"),
        ("channels", "diffusers.path", "vae/config.json decodes latents of 3 channels, but"),
        ("no-weights", "diffusers.path", "/vae has no weights file"),
        ("not-built", "diffusers.path", "vae/config.json does not build a AutoencoderKL"),
        ("sdxl-unet", "diffusers.path", "addition_embed_type='text_time' (added conditioning"),
    ],
)
def test_a_bad_latent_directory_exits_2_before_anything_is_written(
    tmp_path, ddim_dir, latent_dirs, case, field, needle
):
    import shutil

    d = tmp_path / "dir"
    shutil.copytree(ddim_dir if case == "pixels" else latent_dirs["vae"], d)
    sets = ["model=diffusers", f"diffusers.path={d}"]
    if case == "pixels":
        sets.append("diffusers.decode=true")
    elif case == "tiny-vae":
        _edit_json(d / "model_index.json", vae=["diffusers", "AutoencoderTiny"])
    elif case == "channels":
        _edit_json(d / "vae" / "config.json", latent_channels=3)
    elif case == "sdxl-unet":
        _edit_json(d / "unet" / "config.json", addition_embed_type="text_time")
    elif case == "no-weights":
        (d / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    else:  # 16 channels in groups of 5
        _edit_json(d / "vae" / "config.json", norm_num_groups=5)
    line = _refused(tmp_path, sets)
    assert field in line and needle in line, line


@pytest.mark.parametrize("sub, want", [("vae", "float32"), ("vqvae", "float16")])
def test_a_float16_vae_decodes_in_float32_as_diffusers_upcasts(tmp_path, latent_dirs, sub, want):
    """AutoencoderKL's force_upcast (on by default): with diffusers.dtype=float16 the
    network runs in float16 and the VAE decodes in float32, as diffusers' pipelines do;
    a VQModel decodes in the network's float16. A whole run on the CPU (torch has
    float16 kernels there): the images are that decode of the stored latents."""
    from helpers import run_cli
    from tilegraph.pipelines.picard.config import PicardConfig
    from tilegraph.pipelines.picard.model_spec import _decoder_spec

    cfg = PicardConfig(
        model="diffusers", diffusers={"path": str(latent_dirs[sub]), "dtype": "float16"}
    )
    spec = _decoder_spec(cfg)
    assert spec["dtype"] == want and spec["subfolder"] == sub
    assert spec["image_shape"] == (3, 16, 16)
    rc, stdout, err = run_cli(
        "run", "picard", "--set", "model=diffusers", "--set",
        f"diffusers.path={latent_dirs[sub]}", "--set", "diffusers.dtype=float16",
        "--set", "sampler=ddim", "--set", "steps=6", "--set", "window=3", "--set",
        "n_samples=2", "--set", "batch_size=2", "--set", "dtype=float32",
        "--cluster", "sync", "--store", str(tmp_path), "--json",
    )  # fmt: skip
    assert rc == 0, err
    res = xr.open_zarr(last_json(stdout)["path"] + "/result", consolidated=False).load()
    img = res.image.values
    assert np.all(np.isfinite(res.samples.values)) and img.std() > 0.01
    cls = diffusers.VQModel if sub == "vqvae" else diffusers.AutoencoderKL
    dt = getattr(torch, want)
    ae = cls.from_pretrained(str(latent_dirs[sub]), subfolder=sub, torch_dtype=dt)
    with torch.inference_mode():
        z = torch.from_numpy(res.samples.values).to(dt)
        ref = (ae.decode(z / ae.config.scaling_factor).sample.float() / 2 + 0.5).clamp(0, 1)
    # float32: as the float32 tests (thread counts); float16: a few of its ulps at 1 (the
    # VQModel's float32 decode of these latents is 0.034 away: its quantizer amplifies)
    np.testing.assert_allclose(img, ref.numpy(), atol=1e-5 if want == "float32" else 4e-3)


def test_latent_statistics_and_shift_are_applied_as_diffusers_pipelines_do():
    """SDXL's rule with per-channel latents_mean / latents_std, SD3's with shift_factor."""
    from tilegraph.tasks.picard.torch_models import LatentDecoder

    vae = tiny_autoencoder(diffusers.AutoencoderKL, 4, seed=3)
    z = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    mean, std, sf = [0.1, -0.2, 0.3, 0.0], [2.0, 0.5, 1.0, 1.5], 0.13
    zt = torch.from_numpy(z)
    m, s = (torch.tensor(v).view(1, 4, 1, 1) for v in (mean, std))
    with torch.inference_mode():
        want_stats = (vae.decode(zt * s / sf + m).sample / 2 + 0.5).clamp(0, 1).numpy()
        want_shift = (vae.decode(zt / sf + 0.6).sample / 2 + 0.5).clamp(0, 1).numpy()
    got = LatentDecoder(vae, sf, latents_mean=mean, latents_std=std)(z)
    np.testing.assert_allclose(got, want_stats, atol=1e-6)
    np.testing.assert_allclose(LatentDecoder(vae, sf, shift_factor=0.6)(z), want_shift, atol=1e-6)
    assert np.abs(want_stats - want_shift).max() > 1e-3  # the two rules differ here


@pytest.mark.parametrize(
    "cls, sampler",
    [("DPMSolverMultistepScheduler", "dpmpp2m"), ("UniPCMultistepScheduler", "unipc")],
)
def test_a_karras_directory_samples_as_diffusers(tmp_path, cls, sampler):
    """A directory whose DPM-Solver or UniPC config has use_karras_sigmas ("DPM++ 2M
    Karras" on Stable Diffusion's schedule): the sampler takes it, and the run's
    sequential samples are diffusers' own loop with that scheduler."""
    from helpers import run_cli

    sched = getattr(diffusers, cls)(
        use_karras_sigmas=True, beta_schedule="scaled_linear", beta_start=0.00085,
        beta_end=0.012,
    )  # fmt: skip
    path = tmp_path / "karras"
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=sched).save_pretrained(str(path))
    T, n = 15, 3
    rc, stdout, err = run_cli(
        "run", "picard", "--set", "model=diffusers", "--set", f"diffusers.path={path}",
        "--set", f"sampler={sampler}", "--set", f"steps={T}", "--set", "window=8",
        "--set", f"n_samples={n}", "--set", f"batch_size={n}", "--set", "dtype=float32",
        "--cluster", "sync", "--store", str(tmp_path / "runs"), "--json",
    )  # fmt: skip
    assert rc == 0, err
    res = xr.open_zarr(last_json(stdout)["path"] + "/result", consolidated=False).load()
    sched.set_timesteps(T)
    x_T = draw_noise(np.random.SeedSequence(0, spawn_key=(0,)), n, SHAPE, T)[0]
    x = torch.from_numpy(x_T.astype(np.float32))
    net = diffusers.UNet2DModel.from_pretrained(str(path), subfolder="unet")
    with torch.inference_mode():
        for t in sched.timesteps:
            x = sched.step(net(x, t).sample, t, x).prev_sample
    assert np.abs(x.numpy()).max() > 0.1
    np.testing.assert_allclose(res.sequential.values, x.numpy(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "sched_kw, sets, field",
    [
        ({"use_karras_sigmas": True, "prediction_type": "v_prediction"}, [], "karras_sigmas"),
        ({"use_karras_sigmas": True, "prediction_type": "sample"}, [], "karras_sigmas"),
        ({"final_sigmas_type": "sigma_min"}, [], "final_sigmas_type='sigma_min'"),
        ({"use_lu_lambdas": True}, [], "use_lu_lambdas is not supported"),
        ({"use_exponential_sigmas": True}, [], "use_exponential_sigmas is not supported"),
        ({"lambda_min_clipped": -5.1}, [], "lambda_min_clipped=-5.1 is not supported"),
        ({"use_karras_sigmas": True, "sigma_min": 0.1}, [], "sigma_min=0.1 is not supported"),
        (
            {"use_karras_sigmas": True, "beta_schedule": "squaredcos_cap_v2"},
            [],
            "karras_sigmas: not with the cosine schedule",
        ),  # fmt: skip
        ({}, ["sampler=ddim", "karras_sigmas=true"], "karras_sigmas applies to sampler=dpmpp2m"),
        ({"rescale_betas_zero_snr": True}, ["sampler=ddim"], "rescale_betas_zero_snr"),
        ({"variance_type": "fixed_large"}, ["sampler=ddpm"], "variance_type='fixed_large'"),
    ],
)
def test_dpm_noise_levels_tilegraph_lacks_exit_2(tmp_path, sched_kw, sets, field):
    """Scheduler settings that change diffusers' samples and that tilegraph has not:
    refused, not ignored (keys written into the directory's scheduler_config.json)."""

    path = tmp_path / "dpm"
    sched = diffusers.DPMSolverMultistepScheduler()
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=sched).save_pretrained(str(path))
    _edit_json(path / "scheduler" / "scheduler_config.json", **sched_kw)
    sets = sets or ["sampler=dpmpp2m"]
    line = _refused(tmp_path, ["model=diffusers", f"diffusers.path={path}", *sets])
    assert field in line, line


@pytest.mark.parametrize(
    "cls, sampler, sched_kw, field",
    [
        ("UniPCMultistepScheduler", "unipc", {"solver_order": 3}, "solver_order=3"),
        ("UniPCMultistepScheduler", "unipc", {"solver_type": "bh1"}, "solver_type='bh1'"),
        ("UniPCMultistepScheduler", "unipc", {"disable_corrector": [0]}, "disable_corrector=[0]"),
        ("UniPCMultistepScheduler", "unipc", {"predict_x0": False}, "predict_x0=False"),
        ("UniPCMultistepScheduler", "unipc", {"use_flow_sigmas": True}, "use_flow_sigmas"),
        ("DPMSolverMultistepScheduler", "dpmpp2m", {"algorithm_type": "sde-dpmsolver++"},
         "algorithm_type='sde-dpmsolver++'"),
        ("DPMSolverMultistepScheduler", "dpmpp2m", {"solver_order": 3}, "solver_order=3"),
    ],
)  # fmt: skip
def test_solver_settings_tilegraph_does_not_run_exit_2(tmp_path, cls, sampler, sched_kw, field):
    """A directory's DPM-Solver or UniPC config whose solver is not the one the named
    sampler runs (another order, variant or corrector): refused, naming the setting."""
    path = tmp_path / "solver"
    sched = getattr(diffusers, cls)()
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=sched).save_pretrained(str(path))
    _edit_json(path / "scheduler" / "scheduler_config.json", **sched_kw)
    line = _refused(tmp_path, ["model=diffusers", f"diffusers.path={path}", f"sampler={sampler}"])
    assert field in line and "diffusers.path" in line, line


@pytest.mark.parametrize(
    "cls, sampler, sched_kw",
    [
        ("UniPCMultistepScheduler", "unipc", {"solver_type": "midpoint"}),
        ("DPMSolverMultistepScheduler", "dpmpp2m", {"solver_type": "logrho"}),
        ("DPMSolverMultistepScheduler", "dpmpp2m", {"solver_type": "bh2"}),
    ],
)
def test_solver_aliases_diffusers_maps_are_accepted(tmp_path, cls, sampler, sched_kw):
    """Values diffusers maps to the solver tilegraph runs (on construction) pass, and a
    hand-written config without timestep_spacing gets these classes' linspace."""
    import json

    from tilegraph.pipelines.picard.config import PicardConfig

    path = tmp_path / "alias"
    sched = getattr(diffusers, cls)()
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=sched).save_pretrained(str(path))
    conf = path / "scheduler" / "scheduler_config.json"
    _edit_json(conf, **sched_kw)
    assert getattr(diffusers, cls).from_pretrained(str(path), subfolder="scheduler")
    kw = {
        "model": "diffusers",
        "diffusers": {"path": str(path)},
        "sampler": sampler,
        "steps": 20,
        "window": 8,
    }
    assert PicardConfig(**kw).timestep_spacing == "linspace"
    conf.write_text(json.dumps({k: v for k, v in json.loads(conf.read_text()).items()
                                if k != "timestep_spacing"}))  # fmt: skip
    assert PicardConfig(**kw).timestep_spacing == "linspace"


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    """A tiny Stable Diffusion directory (``StableDiffusionPipeline.save_pretrained``): a
    two-layer ``CLIPTextModel`` of 16 features with a character-level ``CLIPTokenizer``
    (16 tokens), a cross-attention UNet on 4 x 8 x 8 latents, an ``AutoencoderKL`` and a
    DDIM scheduler without clipping."""
    transformers = pytest.importorskip("transformers")
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())  # every byte a token: no merges needed
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tok = transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    torch.manual_seed(3)
    encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=16, pad_token_id=len(vocab) - 1,
        bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1,
    ))  # fmt: skip
    torch.manual_seed(4)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        norm_num_groups=4, attention_head_dim=2,
    )  # fmt: skip
    pipe = diffusers.StableDiffusionPipeline(
        vae=tiny_autoencoder(diffusers.AutoencoderKL, 4, seed=5, scaling_factor=0.5),
        text_encoder=encoder, tokenizer=tok, unet=unet,
        scheduler=diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=False,
                                          steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("sd") / "pipe"
    pipe.save_pretrained(str(path))
    return path


def test_prompts_are_encoded_and_sampled_as_stable_diffusion_does(tmp_path, sd_dir):
    """prompts=[...] with guidance: the run encodes the prompts and the negative prompt
    once (stored in the run), as StableDiffusionPipeline.encode_prompt does; its sequential
    latents and decoded images are diffusers' own pipeline run on the same start latents
    (DDIM, eta 0); the Picard images within the tolerance of those."""
    from helpers import run_cli

    prompts, T, g = ["a cat", "a dog in a storm at night"], 6, 3.0  # the second: cut
    rc, stdout, err = run_cli(
        "run", "picard", "--set", "model=diffusers", "--set", f"diffusers.path={sd_dir}",
        "--set", f"prompts={prompts}", "--set", "negative_prompt=blurry", "--set",
        f"guidance_scale={g}", "--set", "sampler=ddim", "--set", f"steps={T}", "--set",
        "window=3", "--set", "n_samples=2", "--set", "batch_size=2", "--set",
        "dtype=float32", "--set", "tol=0.001", "--cluster", "sync", "--store",
        str(tmp_path), "--json",
    )  # fmt: skip
    assert rc == 0, err
    assert "warning: prompts[1]: longer than the text encoder's tokens" in err, err
    out = last_json(stdout)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(sd_dir))
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        pos, neg = pipe.encode_prompt(prompts, "cpu", 1, True, ["blurry"] * 2)
    kept = xr.open_zarr(out["path"] + "/prompts", consolidated=False).load()
    np.testing.assert_allclose(kept.cond.values, pos.numpy(), atol=1e-6)
    np.testing.assert_allclose(kept.uncond.values, neg[0].numpy(), atol=1e-6)
    assert np.abs(pos[0] - pos[1]).max() > 1e-3  # the prompts differ
    res = xr.open_zarr(out["path"] + "/result", consolidated=False).load()
    x_T = draw_noise(np.random.SeedSequence(0, spawn_key=(0,)), 2, (4, 8, 8), T)[0]
    kw = {"prompt": prompts, "negative_prompt": ["blurry"] * 2, "num_inference_steps": T,
          "guidance_scale": g, "latents": torch.from_numpy(x_T.astype(np.float32))}  # fmt: skip
    with torch.inference_mode():
        lat = pipe(**kw, output_type="latent").images.numpy()
        img = pipe(**kw, output_type="np").images  # (n, row, col, channel) in [0, 1]
    assert np.abs(lat).max() > 0.1
    # this random network's latents reach 117: float32 rounding, 5e-7 relative
    np.testing.assert_allclose(res.sequential.values, lat, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(res.sequential_image.values, img.transpose(0, 3, 1, 2), atol=1e-5)
    np.testing.assert_allclose(res.samples.values, lat, atol=2e-4)  # 4e-5 here


@pytest.mark.parametrize(
    "sets, field",
    [
        (["prompts=[a cat]", "conditioning=/nowhere.zarr"], "prompts: give prompts or"),
        (["model=gmm", "negative_prompt=blurry"], "negative_prompt applies with prompts"),
        (["prompts=[a cat]", "negative_prompt=blurry"], "and guidance_scale != 1"),
        (["model=gmm", "prompts=[a cat]"], "prompts applies to model=diffusers"),
    ],
)
def test_bad_prompt_settings_exit_2(tmp_path, sd_dir, sets, field):
    gmm = "model=gmm" in sets
    base = [] if gmm else ["model=diffusers", f"diffusers.path={sd_dir}"]
    line = _refused(tmp_path, [*base, *sets])
    assert field in line, line


def test_prompts_need_a_text_encoder_of_the_networks_width(tmp_path, sd_dir):
    """A directory without a text encoder, or one whose states are not as wide as the
    network's cross-attention: exit 2 naming prompts; a guidance-distilled network (a
    timestep_cond, LCM's): exit 2 naming diffusers.path."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(sd_dir, bare)
    _edit_json(bare / "model_index.json", text_encoder=[None, None])
    line = _refused(tmp_path, ["model=diffusers", f"diffusers.path={bare}", "prompts=[a]"])
    assert "prompts:" in line and "no text_encoder" in line, line
    lcm = tmp_path / "lcm"
    shutil.copytree(sd_dir, lcm)
    _edit_json(lcm / "unet" / "config.json", time_cond_proj_dim=8)
    line = _refused(tmp_path, ["model=diffusers", f"diffusers.path={lcm}", "prompts=[a]"])
    assert "diffusers.path" in line and "time_cond_proj_dim=8" in line, line
    wide = tmp_path / "wide"
    shutil.copytree(sd_dir, wide)
    _edit_json(wide / "text_encoder" / "config.json", hidden_size=32)
    line = _refused(tmp_path, ["model=diffusers", f"diffusers.path={wide}", "prompts=[a]"])
    assert "prompts:" in line and "32 features" in line, line
