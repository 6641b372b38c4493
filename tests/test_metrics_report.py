"""Evaluation metrics, figures and the report on known inputs."""
from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from vaelab import density, plots, report
from vaelab.data import CIFAR10
from vaelab.metrics import active_units, evaluate, psnr
from vaelab.model import VAE
from vaelab.params import FiguresConfig, ModelConfig, SamplingConfig

SMALL = ModelConfig(latent_dim=6, widths=(8, 16, 32), res_blocks=0)


def test_active_units_counts_planted_constant_dimension():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(1000, 5, generator=g)
    mu[:, 2] = 0.7  # constant: carries no information
    mu[:, 4] *= 0.05  # variance 0.0025 < 0.01
    assert active_units(mu) == 3


def test_psnr():
    assert psnr(0.01) == pytest.approx(20.0)
    assert psnr(1e-4) == pytest.approx(40.0)


def test_evaluate_outputs_consistent_numbers():
    torch.manual_seed(0)
    model = VAE(SMALL)
    x = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    m, kl = evaluate(model, x, torch.device("cpu"), batch_size=8, bf16=False)
    assert len(kl) == 6 and sum(kl) == pytest.approx(m["rate_nats"], rel=1e-5)
    assert m["test_neg_elbo_nats"] == pytest.approx(m["rate_nats"] + m["distortion_nats"])
    assert m["test_psnr"] == pytest.approx(psnr(m["test_recon_mse"]))
    assert m["n_test_images"] == 20 and 0 <= m["active_units"] <= 6
    again, _ = evaluate(model, x, torch.device("cpu"), batch_size=8, bf16=False)
    assert again == m  # seeded: repeatable


def figure_inputs(g: torch.Generator) -> tuple[CIFAR10, pd.DataFrame]:
    """A 30-image test set (no training images) and a two-epoch history, for make_figures."""
    ds = CIFAR10(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64),
                 torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.arange(30) % 10, tuple(f"class{i}" for i in range(10)))
    history = pd.DataFrame([{"epoch": e, **{f"{s}_{k}": 1.0 / e for s in ("train", "test")
                                            for k in ("loss", "recon", "kl", "bpd")}} for e in (1, 2)])
    return ds, history


def test_make_figures_builds_every_figure():
    torch.manual_seed(0)
    model = VAE(SMALL).eval()
    g = torch.Generator().manual_seed(0)
    ds, history = figure_inputs(g)
    response = pd.DataFrame({"dim": range(6), "brightness": [0, 0, 5.0, 0, 0, 0.1], "flip": [1.0] * 6})
    gmm = density.fit_gmm(torch.randn(50, 6, generator=g), 3, 20)
    figs = plots.make_figures(model, ds, history, [0.1 * j for j in range(6)], response, 1.0,
                              FiguresConfig(traversal_dims=3), SamplingConfig(temperature=0.5), gmm, 0,
                              torch.device("cpu"))
    assert set(figs) == {stem for stem, _ in report.FIGURES}
    samplers = [t.get_text() for t in figs["samplers"].axes[0].get_yticklabels()]
    assert samplers == ["z ~ N(0, I)", "z ~ N(0, 0.5² I)", "mixture (3)\non training μ"]
    ax = figs["interpolation_test"].axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(labels) == 12 and labels[0].endswith("(input)") and labels[0].split("\n")[0] != labels[-1].split("\n")[0]
    # Traversals: the top-KL dimensions first.
    rows = [t.get_text() for t in figs["traversals"].axes[0].get_yticklabels()]
    assert rows[0].startswith("z5") and rows[1].startswith("z4")
    # Factor heatmap: one row per factor, the top share annotated (brightness: 5 / 5.1 on z2).
    heat = figs["factor_response"].axes[0]
    assert [t.get_text() for t in heat.get_yticklabels()] == ["brightness", "flip"]
    assert "0.98" in [t.get_text() for t in heat.texts]


def test_comparison_figures():
    rows = [row(1, 120.0, 21.0, 6.4, 40), row(5, 30.0, 18.0, 6.9, 12, dist=14200.0)]
    fig = plots.rate_distortion(rows)
    ax = fig.axes[0]
    xs, ys = ax.lines[0].get_data()
    assert list(xs) == [120.0, 30.0] and list(ys) == [14000.0, 14200.0]
    # The iso-line of beta = 1: rate + distortion stays at its negative ELBO.
    lx, ly = ax.lines[1].get_data()
    assert all(abs(a + b - 14120.0) < 1e-6 for a, b in zip(lx, ly))
    bars = plots.kl_bars([(1.0, [0.5, 3.0, 1.0]), (5.0, [0.1, 0.2, 0.0])])
    heights = [p.get_height() for p in bars.axes[0].patches]
    assert heights == [3.0, 1.0, 0.5] and len(bars.axes) == 2


def test_lerp_includes_endpoints():
    z1, z2 = torch.zeros(4), torch.ones(4)
    path = plots.lerp(z1, z2, 10)
    assert path.shape == (10, 4)
    assert torch.equal(path[0], z1) and torch.equal(path[-1], z2)


def row(beta, rate, psnr_db, bpd, au, dist=14000.0, fcd=40.0, tc=20.0, factor=0.3, probe=0.4):
    quality = {"fcd": fcd, "kid": fcd / 1000, "kid_std": 0.001, "judge_confidence": 0.6, "class_entropy": 3.1}
    return {"beta": beta, "tag": f"{beta:g}", "test_bpd": bpd, "rate_nats": rate, "distortion_nats": dist,
            "test_recon_mse": 10 ** (-psnr_db / 10), "test_psnr": psnr_db, "active_units": au, "latent_dim": 64,
            "train_minutes": 10.0, "test_iw_bpd": bpd - 0.05, "iw_samples": 64, "iw_images": 1000,
            "total_correlation": tc, "tc_batch_size": 10000, "probe_accuracy": probe, "factor_score": factor,
            **{f"factor_score_{f}": factor for f in report.FACTORS}, **quality,
            **{f"recon_{k}": v / 2 for k, v in quality.items()}, "recon_judge_accuracy": 0.5, "n_samples": 10000,
            **{f"tau_{k}": v * 1.1 for k, v in quality.items()}, "temperature": 0.7,
            **{f"gmm_{k}": v * 0.9 for k, v in quality.items()}, "gmm_components": 10, "n_test_images": 10000}


REFERENCE = {"test_accuracy": 0.87, "train_seconds": 200.0, "epochs": 8, "n_real": 10000, "real_fcd": 0.5,
             "real_kid": 0.0001, "real_kid_std": 0.0001, "real_judge_confidence": 0.9, "real_class_entropy": 3.32}


def test_summary_directions_follow_the_numbers():
    text = report.summary([row(1, 120.0, 21.0, 6.4, 40), row(5, 30.0, 18.0, 6.9, 12)])
    assert "KL (rate) fell from 120.0 to 30.0 nats" in text
    assert "PSNR fell from 21.00 to 18.00 dB" in text
    assert "active units fell from 40 to 12 of 64" in text
    assert "6.400 bits/dim, at β = 1" in text
    # Reversed numbers give reversed words: nothing is hard-coded.
    text = report.summary([row(1, 30.0, 18.0, 6.9, 12), row(5, 120.0, 21.0, 6.4, 40)])
    assert "KL (rate) rose from 30.0 to 120.0 nats" in text and "at β = 5" in text
    flat = report.summary([row(1, 120.0, 21.00, 6.4, 40), row(5, 60.0, 20.98, 6.5, 40)])
    assert "PSNR stayed about the same" in flat and "lose detail" not in flat and "moved by only 0.02 dB" in flat
    three = report.summary([row(1, 120.0, 21.0, 6.4, 40), row(2, 150.0, 20.0, 6.5, 30), row(5, 30.0, 18.0, 6.9, 12)])
    assert "(not monotonically)" in three and "PSNR fell monotonically" in three


def test_summary_weighs_quality_against_organisation():
    lo = row(1, 120.0, 21.0, 6.4, 40, fcd=40.0, tc=30.0, factor=0.2, probe=0.45)
    hi = row(5, 30.0, 18.0, 6.9, 12, fcd=60.0, tc=10.0, factor=0.4, probe=0.35)
    text = report.summary([lo, hi], REFERENCE)
    assert "FCD rose from 40.00 to 60.00 (real images: 0.50)" in text
    assert "total correlation fell from 30.0 to 10.0 nats" in text
    assert "on none of the four visual-quality numbers" in text
    assert "on two of the three organisation numbers (total correlation, factor score)" in text
    assert "traded visual quality for organisation" in text
    # Swap the roles: the verdict follows.
    text = report.summary([row(1, 120.0, 18.0, 6.4, 40, fcd=60.0, tc=10.0, factor=0.4, probe=0.45),
                           row(5, 30.0, 21.0, 6.9, 12, fcd=40.0, tc=30.0, factor=0.2, probe=0.35)], REFERENCE)
    assert "on three of the four visual-quality numbers (FCD, KID, PSNR)" in text and "on none of the three" in text
    assert "helped the samples more than the organisation" in text


def test_summary_numbers_come_from_rows_and_stay_short():
    rows = [row(1, 123.4, 21.07, 6.412, 41, fcd=41.3, tc=22.2), row(2, 77.7, 19.55, 6.6, 25, fcd=35.5, tc=14.4),
            row(5, 31.2, 18.03, 6.93, 12, fcd=52.2, tc=9.9)]
    text = report.summary(rows, REFERENCE)
    assert len(text.split()) <= 300
    allowed = set()
    for r in [*rows, REFERENCE]:
        for v in r.values():
            if isinstance(v, (int, float)):
                allowed |= {f"{v:g}", f"{v:.0f}", f"{v:.1f}", f"{v:.2f}", f"{v:.3f}", f"{int(v)}"}
    for a in rows:
        for b in rows:
            allowed |= {f"{a['rate_nats'] - b['rate_nats']:.1f}", f"{abs(a['test_psnr'] - b['test_psnr']):.2f}"}
    for number in re.findall(r"\d+(?:\.\d+)?", text):
        assert number in allowed, f"{number} in the summary is not a measured number"


def test_render_has_table_figures_and_side_by_side():
    rows = [row(1, 120.0, 21.0, 6.4, 40), row(5, 30.0, 18.0, 6.9, 12)]
    md = report.render(rows, {"1": "figures/beta_1", "5": "figures/beta_5"},
                       {"n_train": 50000, "n_test": 10000, "epochs": 20, "seed": 0, "choices": ["z = 64"]},
                       REFERENCE, {"rate_distortion": "comparison/rd.png", "kl_per_dim": "comparison/kl.png"})
    assert "| 1 | 6.400 | 6.350 |" in md and "| 5 | 6.900 | 6.850 |" in md
    assert "| real train images (reference) | 0.50 |" in md and "| β = 5: prior samples (N(0, I) noise) | 40.00 |" in md
    assert "| β = 5: prior samples (N(0, 0.7² I) noise) | 44.00 |" in md
    assert "| β = 1: samples from a 10-component mixture on training μ | 36.00 |" in md
    assert "| β = 1: reconstructions | 20.00 |" in md
    assert "| 5 | 12 | 20.0 | 0.400 | 0.300 |" in md  # organisation table
    assert "(comparison/rd.png)" in md and "(comparison/kl.png)" in md
    assert "87.0% test accuracy" in md
    for stem, _ in report.FIGURES:
        assert f"(figures/beta_1/{stem}.png)" in md and f"(figures/beta_5/{stem}.png)" in md
    assert "| β = 1 | β = 5 |" in md


def test_html_report_embeds_every_image_and_renders_tables():
    import base64

    from vaelab.report import to_html

    png = {"figures/beta_1/a.png": b"\x89PNG-one", "comparison/b c.png": b"\x89PNG-two"}
    md = ("# Title\n\n| β | bits/dim |\n|---:|---:|\n| 1 | 6.161 |\n| 5 | 6.175 |\n\n"
          "![first](figures/beta_1/a.png)\n\n![second](comparison/b c.png)\n\nA [link](other.md) stays a link.\n")
    read = []
    page = to_html(md, lambda link: read.append(link) or png[link])
    assert sorted(read) == sorted(png)
    embedded = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(png.values())
    assert not re.search(r'src="(?!data:)', page)
    assert re.search(r"<th[^>]*>β</th>", page) and "<td" in page and "6.175" in page
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page


def test_html_report_names_a_missing_image():
    from vaelab.report import to_html

    def read(link):
        raise FileNotFoundError(f"no such figure: {link}")

    with pytest.raises(FileNotFoundError, match="x.png"):
        to_html("![x](x.png)\n", read)


def preset(name, description, betas_rows, judge_md5="j"):
    return {"preset": name, "description": description, "judge_md5": judge_md5,
            "model": {"latent_dim": 128, "likelihood": "gaussian", "res_blocks": 0},
            "train": {"epochs": 6, "mmd_weight": 0.0, "ema_decay": 0.0, "kl_warmup_epochs": 0.0},
            "betas": [{"beta": r["beta"], "train": {"train_seconds": 60.0 * r["train_minutes"]},
                       "eval": {k: v for k, v in r.items() if k not in ("train_minutes", "tag")},
                       "prior_samples": f"{name}_beta_{r['beta']:g}.png"}
                      for r in betas_rows]}


def test_baseline_ablation_and_targets_follow_the_numbers():
    default = [row(1, 120.0, 21.0, 6.4, 40, fcd=90.0), row(5, 30.0, 18.0, 6.9, 12, fcd=95.0)]
    base = preset("baseline", "", [row(1, 300.0, 23.0, 6.2, 128, fcd=200.0), row(5, 90.0, 20.0, 6.5, 60, fcd=210.0)])
    step = preset("baseline-mmd", "+ MMD", [row(1, 280.0, 22.5, 6.25, 128, fcd=150.0)])
    lines = "\n".join(report.comparison_section(default, [base, step], "j", {"1": "figures/beta_1", "5": "figures/beta_5"}))
    assert "| β = 1: baseline | β = 1: default | β = 5: baseline | β = 5: default |" in lines
    assert "(presets/baseline_beta_5.png) | ![β = 5, default](figures/beta_5/prior_samples.png) |" in lines
    assert "| β = 1: baseline | 200.00 |" in lines and "| β = 1: default | 90.00 |" in lines
    assert "| β = 5: baseline | 210.00 |" in lines and "| β = 5: default | 95.00 |" in lines
    # The ablation rows run baseline -> each preset -> final default, at β = 1.
    ablation = lines[lines.index("**Ablation**"):]
    assert ablation.index("`baseline`") < ablation.index("`baseline-mmd`: + MMD | 150.00") < ablation.index(
        "**final default**")
    # No description: the recipe in words (a file without prior_flows ran before flow priors: N(0, I)).
    assert "z = 128, N(0, I) prior, gaussian, 0 res. blocks, 6 epochs" in ablation
    recipe = {"model": {**base["model"], "latent_dim": 64}, "train": {**base["train"], "epochs": 24, "betas": [1]}}
    labelled = report.ablation_table([base, step], default[0], recipe)
    assert "| **final default**: baseline with model.latent_dim = 64, train.epochs = 24 | 90.00 |" in labelled
    # A key the preset's file lacks counts as the code default it ran with: only real changes are listed.
    recipe["model"].update(prior_flows=8, prior_hidden=256)
    labelled = report.ablation_table([base, step], default[0], recipe)
    assert "baseline with model.latent_dim = 64, model.prior_flows = 8, train.epochs = 24 | 90.00 |" in labelled
    assert "Warning" not in lines
    # FCD 90 <= 100 met; confidence 0.6 vs 0.6 not higher: missed; entropy 3.1 >= 3: met.
    assert "2 of 3 met" in lines and "FCD 90.00 vs ½ × baseline 100.00: met" in lines
    assert "judge confidence 0.600 vs baseline 0.600: missed" in lines and "class entropy 3.10 vs 3.00 bits: met" in lines
    # The same bars on the reconstructions (half the samples' numbers here): FCD 45 clears, confidence 0.3 and
    # entropy 1.55 do not, so those two are out of reach for any prior that generalises.
    assert ("Ceiling: the test images' reconstructions (codes of unseen images, decoded) score FCD 45.00, judge "
            "confidence 0.300, class entropy 1.55.") in lines
    assert "so the judge confidence and class entropy targets are out of reach of a better prior alone" in lines
    sharp = {**default[0], "recon_judge_confidence": 0.7, "recon_class_entropy": 3.2}
    assert report.targets(sharp, base["betas"][0]["eval"]).endswith(
        "so every target is within reach of a better prior alone.")
    no_recon = {k: v for k, v in default[0].items() if not k.startswith("recon_")}
    assert "Ceiling" not in report.targets(no_recon, base["betas"][0]["eval"])
    worse = report.comparison_section([row(1, 120.0, 21.0, 6.4, 40, fcd=101.0)], [base], "other-judge")
    text = "\n".join(worse)
    assert "FCD 101.00 vs ½ × baseline 100.00: missed" in text and "1 of 3 met" in text
    assert "**Warning:** judged by another judge model than this run's: baseline." in text
    none = "\n".join(report.comparison_section(default, [], "j"))
    assert "None has been run yet" in none and "|" not in none


def test_figures_of_a_flow_prior_model_decode_noise_through_the_flow():
    """With a flow prior the grid and the sampler rows decode f(e) for e ~ N(0, I), and say so."""
    from vaelab.metrics import decode_uint8, sample_uint8

    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dim=6, widths=(8, 8, 8), res_blocks=0, likelihood="gaussian", prior_flows=2,
                            prior_hidden=8)).eval()
    with torch.no_grad():
        for c in model.prior.couplings:
            c.net[-1].bias.normal_(0, 1.0)  # a flow far from the identity
    e = torch.randn(4, 6)
    assert torch.equal(sample_uint8(model, e), decode_uint8(model, model.codes(e)))
    assert not torch.equal(sample_uint8(model, e), decode_uint8(model, e))
    g = torch.Generator().manual_seed(0)
    ds, history = figure_inputs(g)
    response = pd.DataFrame({"dim": range(6), "brightness": [1.0] * 6})
    gmm = density.fit_gmm(torch.randn(50, 6, generator=g), 2, 5)
    figs = plots.make_figures(model, ds, history, [0.1] * 6, response, 1.0, FiguresConfig(traversal_dims=2),
                              SamplingConfig(temperature=0.5), gmm, 0, torch.device("cpu"))
    samplers = [t.get_text() for t in figs["samplers"].axes[0].get_yticklabels()]
    assert samplers[:2] == ["z = f(e)\ne ~ N(0, I)", "z = f(e)\ne ~ N(0, 0.5² I)"]
    assert "prior flow" in figs["interpolation_prior"]._suptitle.get_text()
