"""`python -m vaelab`: sample, interpolate and reconstruct CIFAR-10 images with a trained VAE (a DVC model file or
an MLflow model URI), and print the report's summary from the metrics files. The core is pure functions on a Codec; `main` is a thin argparse layer around them."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from vaelab import claims, data, layout, plots, samplers, storage
from vaelab.codec import Codec
from vaelab.model import load_model

MLFLOW_SCHEMES = ("models:/", "runs:/")
RESIZE_NOTE = "images of any size or mode are converted to RGB and resized to 32x32 (bicubic; aspect ratio not kept)"


class CLIError(ValueError):
    """Bad input to the CLI (a missing file, an unreadable image, an index out of range); the message names it."""


# -- the core: codes and images, no IO ---------------------------------------------------------------------------

def sample_codes(n: int, latent_dim: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """n noise vectors ~ N(0, temperature^2 I) from a generator seeded with `seed`: (n, latent_dim). They are the
    codes themselves for a model with the N(0, I) prior, and the flow's input for a flow prior."""
    if n < 1:
        raise CLIError(f"the number of samples must be >= 1, got {n}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise CLIError(f"the temperature must be a finite number >= 0, got {temperature}")
    g = torch.Generator().manual_seed(seed)
    return temperature * torch.randn(n, latent_dim, generator=g)


def interpolate_codes(z_a: torch.Tensor, z_b: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` codes on the straight line from z_a to z_b (each (z,)), both ends included: (steps, z)."""
    if steps < 1:
        raise CLIError(f"the number of steps must be >= 1, got {steps}")
    return plots.lerp(z_a, z_b, steps)


@torch.no_grad()
def decode(codec: Codec, z: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, 32, 32) in [0, 1] of codes z (B, z)."""
    return codec.decode(z)


@torch.no_grad()
def generate(codec: Codec, noise: torch.Tensor) -> torch.Tensor:
    """Prior samples (B, 3, 32, 32) in [0, 1] of noise (B, z) ~ N(0, I) (mapped through the prior's flow, if any)."""
    return codec(noise)


@torch.no_grad()
def encode(codec: Codec, images: torch.Tensor) -> torch.Tensor:
    """Posterior means (B, z) of images (B, 3, 32, 32) in [0, 1]."""
    return codec.encode(images)


def reconstruct(codec: Codec, images: torch.Tensor) -> torch.Tensor:
    """decode(encode(x)) of images (B, 3, 32, 32) in [0, 1], using the posterior mean."""
    return decode(codec, encode(codec, images))


# -- inputs: the model and the images ----------------------------------------------------------------------------

def beta_paths(beta: str) -> layout.BetaPaths:
    """The trained files of `--beta` (models/beta_<tag>, its fine-tuned decoder models/decoder/beta_<tag> and its
    sampler), the tag as typed or as DVC prints it ('5' for 5.0, '0.5')."""
    try:
        return layout.find_beta(beta)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None


def load_codec(model: str, tracking_uri: str | None = None, sampler: Path | None = None) -> Codec:
    """A Codec from a DVC model file path (with the ex-post sampler file `sampler`, if given) or an MLflow model
    URI (models:/name@alias, models:/name/3, runs:/...; a registered model carries its sampler)."""
    if model.startswith(MLFLOW_SCHEMES):
        from vaelab import tracking  # imported here: mlflow takes seconds to import and model files do not need it

        uri = tracking_uri or tracking.resolve_uri("", Path.cwd())
        try:
            codec = tracking.load_model(model, uri)
        except tracking.TrackingError as e:
            raise CLIError(str(e)) from None
        if not isinstance(codec, Codec):
            raise CLIError(f"{model} holds a {type(codec).__name__}, not a vaelab Codec: the judge, or a model logged "
                           f"before the Codec export (retrain it: dvc repro)")
        return codec.eval()
    try:
        vae, _ = load_model(model)
        fitted = None
        if sampler is not None:
            try:
                fitted = samplers.load(sampler, storage.weights_md5(model))
            except samplers.StaleSamplerError:
                raise CLIError(f"{sampler} was fitted to another model's codes than {model}'s; run dvc repro") from None
    except FileNotFoundError as e:
        raise CLIError(str(e)) from None
    except CLIError:
        raise
    except Exception as e:  # a directory, a truncated file or another kind of checkpoint: one clear message
        # torch's unpickling errors run to a dozen lines: their first sentence names the problem.
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else ""
        raise CLIError(f"{model} is not a model file saved by the train stage ({type(e).__name__}: {first})") from None
    return Codec(vae, fitted).eval()


def read_images(paths: Sequence[str]) -> torch.Tensor:
    """Image files as (B, 3, 32, 32) floats in [0, 1]; see RESIZE_NOTE."""
    out = []
    for p in paths:
        try:
            with Image.open(p) as img:
                rgb = img.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
        except FileNotFoundError:
            raise CLIError(f"image file not found: {p}") from None
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise CLIError(f"cannot read image {p}: {e}") from None
        out.append(torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1))  # (32, 32, 3) -> (3, 32, 32)
    return torch.stack(out).float() / 255.0


def cifar_test_images(batches_dir: Path, indices: Sequence[int]) -> torch.Tensor:
    """CIFAR-10 test images by index as (B, 3, 32, 32) floats in [0, 1]."""
    if not Path(batches_dir).is_dir():
        raise CLIError(f"CIFAR-10 folder {batches_dir} not found (run dvc repro download, or pass --data)")
    try:
        test_x = data.load(batches_dir).test_x
    except data.DatasetError as e:
        raise CLIError(str(e)) from None
    for i in indices:
        if not 0 <= i < len(test_x):
            raise CLIError(f"test index {i} is out of range: the test set has {len(test_x)} images "
                           f"(0..{len(test_x) - 1})")
    return test_x[list(indices)].float() / 255.0


# -- output ------------------------------------------------------------------------------------------------------

def write_png(images: torch.Tensor, nrow: int, out: Path, upscale: int = 1) -> None:
    """Tile images (N, 3, 32, 32) in [0, 1], `nrow` per row, into a PNG written atomically."""
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    canvas = plots.tile(pixels, nrow, upscale=upscale)
    try:
        with storage.atomic_path(out) as tmp:
            Image.fromarray(canvas).save(tmp, format="PNG")
    except OSError as e:
        raise CLIError(f"cannot write {out}: {e.strerror or e}") from None


# -- the command line --------------------------------------------------------------------------------------------

def summary_text(root: Path = Path(".")) -> str:
    """The report's summary, the β analysis, from the metrics files under `root` (metrics/sweep.json,
    metrics/control.json, every full-recipe model's train.json and eval.json, the presets' results), as the report
    stage writes it; CLIError when there is no sweep to analyse."""
    sweep_file = root / layout.SWEEP_METRICS
    if not sweep_file.is_file():
        raise CLIError(f"no {layout.SWEEP_METRICS} under {root}: run `dvc repro sweep_report` first")
    control_file = root / layout.CONTROL_METRICS
    rows = [storage.read_json(d / "train.json") | storage.read_json(d / "eval.json")
            for d in sorted((root / layout.BETA_METRICS).glob("beta_*"))
            if (d / "train.json").is_file() and (d / "eval.json").is_file()]
    presets = [storage.read_json(f) for f in sorted((root / layout.PRESET_RESULTS).glob("*.json"))]
    return claims.beta_analysis(rows, storage.read_json(sweep_file),
                                storage.read_json(control_file) if control_file.is_file() else None,
                                claims.seed_spread(presets)[1])


def run(args: argparse.Namespace) -> str:
    """Run one parsed subcommand; returns what was written."""
    if args.model:
        codec = load_codec(args.model, args.tracking_uri, getattr(args, "sampler", None))
    else:
        paths = beta_paths(args.beta)
        # The model the sampler was fitted with: its decoder fine-tuned by decoder@<beta> (the trained one before).
        model = paths.tuned_model if paths.tuned_model.is_file() else paths.model
        codec = load_codec(str(model), sampler=paths.sampler if paths.sampler.is_file() else None)
    if args.command == "sample":
        nrow = args.nrow or math.ceil(math.sqrt(args.n))
        if codec.sampler is not None and not args.prior:
            if args.temperature != 1.0:
                raise CLIError("--temperature scales z ~ N(0, I): add --prior to draw from it instead of the sampler")
            with torch.no_grad():
                write_png(codec.sample(args.n, torch.Generator().manual_seed(args.seed)), nrow, args.out, args.upscale)
            return f"{args.n} samples from the ex-post sampler (seed {args.seed})"
        z = sample_codes(args.n, codec.latent_dim, args.seed, args.temperature)
        write_png(generate(codec, z), nrow, args.out, args.upscale)
        return f"{args.n} samples of z ~ N(0, {args.temperature:g}² I) (seed {args.seed})"
    if args.command == "interpolate":
        if args.seeds:
            # A line between two noise draws, each step a prior sample.
            z_a, z_b = (sample_codes(1, codec.latent_dim, s)[0] for s in args.seeds)
            line = generate(codec, interpolate_codes(z_a, z_b, args.steps))
        else:
            images = read_images(args.images) if args.images else cifar_test_images(args.data, args.test_indices)
            z_a, z_b = encode(codec, images)
            line = decode(codec, interpolate_codes(z_a, z_b, args.steps))
        write_png(line, args.steps, args.out, args.upscale)
        return f"{args.steps} interpolation steps"
    images = read_images(args.images)
    # Originals on the top row, their reconstructions below.
    write_png(torch.cat([images, reconstruct(codec, images)]), len(images), args.out, args.upscale)
    return f"{len(images)} originals and reconstructions"


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:  # isdigit: no sign, no decimal point
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    """The `vaelab` parser with its four subcommands."""
    p = argparse.ArgumentParser(prog="vaelab", description="Sample, interpolate and reconstruct CIFAR-10 images "
                                "with a trained VAE. `vaelab <subcommand> --help` lists its options.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{sample,interpolate,reconstruct,summary}")
    common = argparse.ArgumentParser(add_help=False)
    which = common.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a DVC model file (models/beta_1/model.pt) or an MLflow model URI (models:/"
                                       "cifar10-vae@beta-5, models:/cifar10-vae/3, models:/m-<id>, runs:/<id>/model)")
    which.add_argument("--beta", help="shorthand for --model models/decoder/beta_<β>/model.pt with its sampler "
                                      "models/sampler/beta_<β>/sampler.pt")
    common.add_argument("--tracking-uri", help="MLflow store for URIs (default: $MLFLOW_TRACKING_URI, else "
                                               "sqlite:///<cwd>/mlflow.db)")
    common.add_argument("--upscale", type=positive, default=4, help="nearest-neighbour zoom of the PNG (default 4)")

    s = sub.add_parser("sample", parents=[common], help="draw samples into a grid: from the ex-post sampler the "
                       "model was fitted with (a registered model, --beta, or --sampler), else decoded z ~ N(0, τ² I)")
    s.add_argument("--sampler", type=Path, help="with --model FILE: the sampler file to draw from "
                                                "(models/sampler/beta_<β>/sampler.pt)")
    s.add_argument("--prior", action="store_true", help="decode z ~ N(0, τ² I) (through the prior's flow, if any) "
                                                        "even when the model has a sampler")
    s.add_argument("--n", type=positive, default=16, help="number of samples (default 16)")
    s.add_argument("--seed", type=int, default=0, help="seed of the codes (default 0)")
    s.add_argument("--temperature", type=float, default=1.0, help="with --prior: τ, the standard deviation of z "
                                                                 "(default 1)")
    s.add_argument("--nrow", type=positive, help="images per row (default √n)")
    s.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG to write (default samples.png)")

    i = sub.add_parser("interpolate", parents=[common], help="decode a straight line in z between two endpoints",
                       epilog=f"Endpoints of images are their posterior means; {RESIZE_NOTE}.")
    ends = i.add_mutually_exclusive_group(required=True)
    ends.add_argument("--seeds", type=int, nargs=2, metavar=("A", "B"), help="z_A, z_B ~ N(0, I) from these seeds")
    ends.add_argument("--images", nargs=2, metavar=("A.png", "B.png"), help="two image files")
    ends.add_argument("--test-indices", type=int, nargs=2, metavar=("I", "J"), help="two CIFAR-10 test images")
    i.add_argument("--data", type=Path, default=Path("data") / data.BATCHES_DIR,
                   help="CIFAR-10 folder for --test-indices (default data/cifar-10-batches-py)")
    i.add_argument("--steps", type=positive, default=10, help="images in the row, ends included (default 10)")
    i.add_argument("--out", type=Path, default=Path("interpolation.png"), help="default interpolation.png")

    r = sub.add_parser("reconstruct", parents=[common], help="encode and decode image files",
                       epilog=f"Writes the originals on top, their reconstructions below; {RESIZE_NOTE}.")
    r.add_argument("images", nargs="+", help="image files")
    r.add_argument("--out", type=Path, default=Path("reconstructions.png"), help="default reconstructions.png")

    sub.add_parser("summary", help="print the report's summary (the β analysis) from this repository's metrics "
                   "files, without rerunning the report stage")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit status 0, or 2 with a one-line message naming the problem (argparse errors too)."""
    args = parser().parse_args(argv)
    try:
        if args.command == "summary":
            print(summary_text())
            return 0
        what = run(args)
    except CLIError as e:
        print(f"vaelab {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(f"vaelab {args.command}: wrote {args.out} ({what})")
    return 0
