"""The `python -m vaelab` command line on a tiny VAE: PNG contents against the model, MLflow URIs, clear errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab import cli, data, density, storage, tracking
from vaelab.codec import Codec
from vaelab.model import VAE, load_model
from vaelab.params import ModelConfig, to_dict

REPO = Path(__file__).resolve().parents[1]
CFG = ModelConfig(latent_dim=8, widths=(8, 16, 32), res_blocks=0)
PAD = 2  # plots.tile's gap between images


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A randomly initialised tiny VAE saved as the train stage saves it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "beta_1" / "model.pt"
    storage.save_model(path, VAE(CFG), {"model": to_dict(CFG), "seed": 0, "data": {"subset": 0}})
    return path


@pytest.fixture(scope="module")
def codec(model_file) -> Codec:
    return cli.load_codec(str(model_file))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of cli.main (argparse errors exit via SystemExit)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def tile_at(canvas: np.ndarray, row: int, col: int) -> np.ndarray:
    """The 32x32 image at (row, col) of an upscale-1 grid, as (3, 32, 32) uint8."""
    y, x = PAD + row * (32 + PAD), PAD + col * (32 + PAD)
    return canvas[y : y + 32, x : x + 32].transpose(2, 0, 1)


def as_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def write_image(path: Path, size: tuple[int, int], mode: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def test_sample_png_matches_decoded_codes_and_is_seeded(model_file, codec, tmp_path, capsys):
    args = ["sample", "--model", model_file, "--n", 6, "--nrow", 3, "--upscale", 1]
    assert run_cli([*args, "--seed", 1, "--out", tmp_path / "a.png"], capsys)[0] == 0
    assert run_cli([*args, "--seed", 1, "--out", tmp_path / "b.png"], capsys)[0] == 0
    assert run_cli([*args, "--seed", 2, "--out", tmp_path / "c.png"], capsys)[0] == 0
    a = png(tmp_path / "a.png")
    assert a.shape == (2 * (32 + PAD) + PAD, 3 * (32 + PAD) + PAD, 3)
    np.testing.assert_array_equal(a, png(tmp_path / "b.png"))
    assert not np.array_equal(a, png(tmp_path / "c.png"))
    expected = as_uint8(cli.decode(codec, cli.sample_codes(6, 8, seed=1)))
    for k in range(6):
        np.testing.assert_array_equal(tile_at(a, k // 3, k % 3), expected[k])
    # --upscale repeats every pixel: same picture, 4x the size.
    assert run_cli([*args, "--seed", 1, "--upscale", 4, "--out", tmp_path / "d.png"], capsys)[0] == 0
    np.testing.assert_array_equal(png(tmp_path / "d.png")[::4, ::4], a)


def test_temperature_scales_the_codes():
    torch.testing.assert_close(cli.sample_codes(4, 8, seed=3, temperature=0.5), 0.5 * cli.sample_codes(4, 8, seed=3))


def test_interpolation_ends_are_the_decoded_endpoints(codec):
    z_a, z_b = cli.sample_codes(1, 8, seed=1)[0], cli.sample_codes(1, 8, seed=2)[0]
    z = cli.interpolate_codes(z_a, z_b, steps=5)
    assert z.shape == (5, 8)
    torch.testing.assert_close(z[2], (z_a + z_b) / 2)
    frames = cli.decode(codec, z)
    torch.testing.assert_close(frames[0], cli.decode(codec, z_a[None])[0])
    torch.testing.assert_close(frames[-1], cli.decode(codec, z_b[None])[0])


def test_interpolate_by_seeds_writes_one_row(model_file, codec, tmp_path, capsys):
    out = tmp_path / "row.png"
    assert run_cli(["interpolate", "--model", model_file, "--seeds", 1, 2, "--steps", 7, "--upscale", 1,
                    "--out", out], capsys)[0] == 0
    row = png(out)
    assert row.shape == (32 + 2 * PAD, 7 * (32 + PAD) + PAD, 3)
    ends = as_uint8(cli.decode(codec, torch.cat([cli.sample_codes(1, 8, 1), cli.sample_codes(1, 8, 2)])))
    np.testing.assert_array_equal(tile_at(row, 0, 0), ends[0])
    np.testing.assert_array_equal(tile_at(row, 0, 6), ends[1])


def test_interpolate_between_image_files(model_file, codec, tmp_path, capsys):
    a = write_image(tmp_path / "a.png", (32, 32), "RGB", seed=1)
    b = write_image(tmp_path / "b.png", (50, 40), "RGBA", seed=2)  # resized and converted
    out = tmp_path / "row.png"
    assert run_cli(["interpolate", "--model", model_file, "--images", a, b, "--steps", 4, "--upscale", 1,
                    "--out", out], capsys)[0] == 0
    row = png(out)
    assert row.shape == (32 + 2 * PAD, 4 * (32 + PAD) + PAD, 3)
    ends = as_uint8(cli.decode(codec, cli.encode(codec, cli.read_images([a, b]))))
    np.testing.assert_array_equal(tile_at(row, 0, 0), ends[0])
    np.testing.assert_array_equal(tile_at(row, 0, 3), ends[1])


def test_interpolate_between_test_images(model_file, codec, fake_archive, tmp_path, capsys):
    data.safe_extract(fake_archive, tmp_path)
    batches = tmp_path / data.BATCHES_DIR
    out = tmp_path / "row.png"
    base = ["interpolate", "--model", model_file, "--data", batches, "--upscale", 1, "--out", out]
    code, err = run_cli([*base, "--test-indices", 0, 10_000], capsys)
    assert code == 2 and "test index 10000 is out of range" in err and not out.exists()
    assert run_cli([*base, "--test-indices", 0, 9_999, "--steps", 3], capsys)[0] == 0
    # The fake test images are constant 7s: both ends decode the same code.
    end = as_uint8(cli.reconstruct(codec, torch.full((1, 3, 32, 32), 7 / 255)))[0]
    np.testing.assert_array_equal(tile_at(png(out), 0, 0), end)
    np.testing.assert_array_equal(tile_at(png(out), 0, 2), end)


def test_reconstruct_writes_originals_above_reconstructions(model_file, codec, tmp_path, capsys):
    files = [write_image(tmp_path / "a.png", (32, 32), "RGB", 1), write_image(tmp_path / "b.jpg", (64, 48), "L", 2),
             write_image(tmp_path / "c.png", (20, 20), "RGBA", 3)]
    out = tmp_path / "recon.png"
    assert run_cli(["reconstruct", "--model", model_file, "--upscale", 1, "--out", out, *files], capsys)[0] == 0
    grid = png(out)
    assert grid.shape == (2 * (32 + PAD) + PAD, 3 * (32 + PAD) + PAD, 3)
    originals = cli.read_images(files)
    # A 32x32 RGB file passes through unchanged; the others are converted and resized.
    np.testing.assert_array_equal(tile_at(grid, 0, 0), np.asarray(Image.open(files[0])).transpose(2, 0, 1))
    recons = as_uint8(cli.reconstruct(codec, originals))
    for k in range(3):
        np.testing.assert_array_equal(tile_at(grid, 0, k), as_uint8(originals)[k])
        np.testing.assert_array_equal(tile_at(grid, 1, k), recons[k])


@pytest.fixture(scope="module")
def registry(model_file, tmp_path_factory) -> str:
    """A sqlite MLflow store holding the tiny model, registered as cifar10-vae with alias beta-1."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # The experiment's artifact root defaults to ./mlruns: keep it in the temporary folder.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        tracking.prepare_store(uri, "test")
        with tracking.run(uri, "test", "beta=1"):
            model_uri = tracking.log_model(Codec(load_model(model_file)[0]), (8,))
            tracking.register_model(model_uri, "cifar10-vae", "beta-1", "test")
    return uri


@pytest.mark.parametrize("model_uri", ["models:/cifar10-vae@beta-1", "models:/cifar10-vae/1"])
def test_mlflow_model_samples_equal_the_dvc_file(model_file, registry, model_uri, tmp_path, capsys):
    args = ["sample", "--seed", 5, "--n", 4]
    assert run_cli([*args, "--model", model_file, "--out", tmp_path / "dvc.png"], capsys)[0] == 0
    assert run_cli([*args, "--model", model_uri, "--tracking-uri", registry, "--out", tmp_path / "mlflow.png"],
                   capsys)[0] == 0
    np.testing.assert_array_equal(png(tmp_path / "mlflow.png"), png(tmp_path / "dvc.png"))


def test_beta_shorthand_finds_the_model_folder(model_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("models/beta_1").mkdir(parents=True)
    Path("models/beta_1/model.pt").write_bytes(model_file.read_bytes())
    assert cli.beta_paths("1.0").model == Path("models/beta_1/model.pt")  # the folder is named as DVC prints 1.0
    assert run_cli(["sample", "--beta", "1", "--out", "s.png"], capsys)[0] == 0 and Path("s.png").is_file()
    code, err = run_cli(["sample", "--beta", "5", "--out", "t.png"], capsys)
    assert code == 2 and "no model for β = 5" in err and "beta_1" in err


@pytest.fixture(scope="module")
def sampler_file(model_file, tmp_path_factory) -> Path:
    """A 2-component mixture on the tiny model's latent space, saved as sampler@<beta> saves it."""
    gmm = density.fit_gmm(3 * torch.randn(200, CFG.latent_dim, generator=torch.Generator().manual_seed(1)), 2, 10)
    path = tmp_path_factory.mktemp("sampler") / "sampler.pt"
    storage.save_state(path, density.to_state(gmm), {"model_md5": storage.weights_md5(model_file)})
    return path


def test_sample_draws_from_the_sampler_when_the_model_has_one(model_file, sampler_file, codec, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert run_cli(["sample", "--model", model_file, "--sampler", sampler_file, "--n", 4, "--seed", 2, "--nrow", 4,
                    "--upscale", 1, "--out", out], capsys)[0] == 0
    state, _ = storage.load_state(sampler_file)
    z = density.sample(density.GaussianMixture(**state), 4, torch.Generator().manual_seed(2))
    expected = as_uint8(cli.decode(codec, z))
    for k in range(4):
        np.testing.assert_array_equal(tile_at(png(out), 0, k), expected[k])
    # --prior decodes z ~ N(0, I) instead; a temperature without --prior is refused.
    prior = tmp_path / "p.png"
    assert run_cli(["sample", "--model", model_file, "--sampler", sampler_file, "--prior", "--n", 4, "--seed", 2,
                    "--nrow", 4, "--upscale", 1, "--out", prior], capsys)[0] == 0
    assert not np.array_equal(png(prior), png(out))
    code, err = run_cli(["sample", "--model", model_file, "--sampler", sampler_file, "--temperature", "0.5",
                         "--out", tmp_path / "t.png"], capsys)
    assert code == 2 and "add --prior" in err


def test_a_sampler_of_another_model_is_refused(sampler_file, tmp_path, capsys):
    torch.manual_seed(7)
    other = tmp_path / "other.pt"
    storage.save_model(other, VAE(CFG), {"model": to_dict(CFG), "seed": 7, "data": {"subset": 0}})
    code, err = run_cli(["sample", "--model", other, "--sampler", sampler_file, "--out", tmp_path / "x.png"], capsys)
    assert code == 2 and "fitted to another model's codes" in err and not (tmp_path / "x.png").exists()


# {model}, {registry} and {tmp} are filled in per test; every case must exit 2 with the message.
ERRORS = {
    "missing model file": (["sample", "--model", "{tmp}/missing.pt"], "model file not found: {tmp}/missing.pt"),
    "unknown alias": (["sample", "--model", "models:/cifar10-vae@beta-7", "--tracking-uri", "{registry}"],
                      "alias beta-7 not found"),
    "no store": (["sample", "--model", "models:/cifar10-vae@beta-1", "--tracking-uri", "sqlite:///{tmp}/none.db"],
                 "no MLflow store at sqlite:///{tmp}/none.db"),
    "bad n": (["sample", "--model", "{model}", "--n", "0"], "argument --n: must be an integer >= 1, got '0'"),
    "bad temperature": (["sample", "--model", "{model}", "--temperature", "nan"], "temperature must be a finite"),
    "bad steps": (["interpolate", "--model", "{model}", "--seeds", "1", "2", "--steps", "-1"], "argument --steps"),
    "one seed": (["interpolate", "--model", "{model}", "--seeds", "1"], "argument --seeds: expected 2 arguments"),
    "missing image": (["interpolate", "--model", "{model}", "--images", "{tmp}/ok.png", "{tmp}/missing.png"],
                      "image file not found: {tmp}/missing.png"),
    "unreadable image": (["reconstruct", "--model", "{model}", "{tmp}/ok.png", "{tmp}/junk.png"],
                         "cannot read image {tmp}/junk.png"),
    "missing dataset": (["interpolate", "--model", "{model}", "--test-indices", "0", "1", "--data", "{tmp}/nodata"],
                        "CIFAR-10 folder {tmp}/nodata not found"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_exit_2_with_a_message_and_write_nothing(model_file, registry, tmp_path, capsys, case):
    write_image(tmp_path / "ok.png", (32, 32), "RGB", 0)
    (tmp_path / "junk.png").write_text("not an image")
    fill = {"model": model_file, "registry": registry, "tmp": tmp_path}
    argv, message = ([a.format(**fill) for a in ERRORS[case][0]], ERRORS[case][1].format(**fill))
    out = tmp_path / "out" / "x.png"
    code, err = run_cli([*argv, "--out", out], capsys)
    assert code == 2 and message in err, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("vaelab ")
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no temporary file left either


def test_module_help_lists_the_subcommands():
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-m", "vaelab", "--help"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    for name in ("sample", "interpolate", "reconstruct"):
        assert name in r.stdout


def test_summary_prints_the_reports_analysis_from_the_metrics_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["summary"]) == 2
    assert "no metrics/sweep.json" in capsys.readouterr().err
    points = [{"beta": b, "rate_nats": r, "rate_nats_lo": r - 1, "rate_nats_hi": r + 1, "active_units_0p01": u,
               "beta_2sigma2": b * 0.02} for b, r, u in ((0.5, 300.0, 128), (500.0, 20.0, 10))]
    storage.write_json(Path("metrics/sweep.json"), {"points": points})
    assert cli.main(["summary"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Along the sweep (β = 0.5 to 500") and "300 [299, 301] to 20.0 [19.0, 21.0] nats (lower)" in out
