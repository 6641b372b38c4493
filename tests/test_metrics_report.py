"""Evaluation metrics, figures and the report on known inputs."""
from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from vaelab import density, plots, report
from vaelab.data import CIFAR10
from vaelab.metrics import likelihood_metrics, per_image, psnr
from vaelab.model import VAE
from vaelab.organisation import active_units
from vaelab.params import FiguresConfig, ModelConfig

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
    images = per_image(model, x, torch.device("cpu"), batch_size=8, bf16=False)
    assert images["rate"].shape == (20,) and images["kl_dims"].shape == (20, 6) and images["mu"].shape == (20, 6)
    m = likelihood_metrics(images, reps=50, seed=0)
    # KL per dimension is against the trained prior, N(0, I): it sums to the rate.
    assert float(images["kl_dims"].mean(0).sum()) == pytest.approx(m["rate_nats"], rel=1e-9)
    assert m["test_neg_elbo_nats"] == pytest.approx(m["rate_nats"] + m["distortion_nats"])
    assert m["test_psnr"] == pytest.approx(psnr(m["test_recon_mse"]))
    for key in ("test_bpd", "rate_nats", "distortion_nats", "test_recon_mse", "test_psnr"):
        assert m[f"{key}_lo"] <= m[key] <= m[f"{key}_hi"], key
    again = likelihood_metrics(per_image(model, x, torch.device("cpu"), batch_size=8, bf16=False), reps=50, seed=0)
    assert again == m  # seeded: repeatable


def figure_inputs(g: torch.Generator) -> tuple[CIFAR10, pd.DataFrame]:
    """A 30-image test set, 20 training images and a two-epoch history, for make_figures."""
    ds = CIFAR10(torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(20) % 10,
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
                              FiguresConfig(traversal_dims=3), gmm, 0, torch.device("cpu"))
    assert set(figs) == {stem for stem, _ in report.FIGURES}
    assert "z ~ N(0, I)" in figs["prior_samples"]._suptitle.get_text()
    assert "ex-post sampler (3-component mixture" in figs["sampler_samples"]._suptitle.get_text()
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
    rows = [row(1, rate=120.0), {**row(5, rate=30.0), "distortion_nats": 14200.0}]
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
    two = plots.side_by_side([torch.zeros(10, 20, 3).numpy(), torch.ones(10, 10, 3).numpy()], ["a", "b"], "t")
    assert [ax.get_title() for ax in two.axes] == ["a", "b"]


def test_lerp_includes_endpoints():
    z1, z2 = torch.zeros(4), torch.ones(4)
    path = plots.lerp(z1, z2, 10)
    assert path.shape == (10, 4)
    assert torch.equal(path[0], z1) and torch.equal(path[-1], z2)


def ci(value: float, half: float) -> dict[str, float]:
    return {"": value, "_lo": value - half, "_hi": value + half}


def row(beta, rate=100.0, psnr_db=21.0, fcd=40.0, tc=2.0, factor=0.3, r2=0.5, probe=0.4, au=40, half=0.01):
    """An eval row whose every headline number has an interval of relative half-width `half`."""
    values = {"test_bpd": 6.4, "test_iw_bpd": 6.35, "rate_nats": rate, "distortion_nats": 14000.0,
              "test_psnr": psnr_db, "fcd": fcd, "sampler_fcd": 0.8 * fcd, "recon_fcd": 0.5 * fcd,
              "recon_judge_accuracy": 0.5, "judge_confidence": 0.6, "class_entropy": 3.1,
              "sampler_judge_confidence": 0.6, "sampler_class_entropy": 3.0, "recon_judge_confidence": 0.7,
              "recon_class_entropy": 3.2, "audit_fcd": 2 * fcd, "audit_sampler_fcd": 1.5 * fcd,
              "audit_recon_fcd": fcd, "audit_sampler_confidence": 0.55, "sharpness_ratio": 0.3,
              "sampler_sharpness_ratio": 0.4, "recon_sharpness_ratio": 0.5, "total_correlation": tc, "factor_score": factor, "factor_r2": r2,
              "probe_accuracy": probe, "active_units_0p01": au, "active_units_0p1": au // 2,
              **{f"factor_score_{f}": factor for f in report.FACTORS}, **{f"factor_r2_{f}": r2 for f in report.FACTORS}}
    out = {"beta": beta, "tag": f"{beta:g}", "latent_dim": 64, "active_units": au, "train_minutes": 10.0,
           "iw_samples": 64, "iw_images": 1000, "tc_batch_size": 2000, "tc_sampled": rate - 7.0,
           "tc_sampled_self_weight": 0.99, "kl_dims_sum_nats": rate, "kid": 0.04, "kid_std": 0.001,
           "sampler_kid": 0.03, "recon_kid": 0.02, "n_samples": 10000, "n_test_images": 10000, "bootstrap_reps": 200}
    for key, v in values.items():
        out |= {key + end: x for end, x in ci(v, abs(v) * half).items()}
    return out


REFERENCE = {"test_accuracy": 0.87, "train_seconds": 200.0, "epochs": 8, "n_real": 10000, "real_fcd": 0.5,
             "real_kid": 0.0001, "real_kid_std": 0.0001, "real_judge_confidence": 0.9, "real_class_entropy": 3.32}


def test_summary_names_a_direction_only_where_intervals_separate():
    lo = row(1, rate=120.0, psnr_db=21.0, fcd=40.0, tc=3.0, factor=0.2, r2=0.6, probe=0.45)
    hi = row(5, rate=30.0, psnr_db=18.0, fcd=60.0, tc=1.0, factor=0.4, r2=0.6, probe=0.45)
    text = report.summary([lo, hi])
    assert "reconstruction PSNR 21.00 [20.79, 21.21] → 18.00 [17.82, 18.18]: lower" in text
    assert "the FCD of z ~ N(0, I) decoded 40.0 [39.6, 40.4] → 60.0 [59.4, 60.6]: higher" in text
    assert "the Gaussian total correlation of q(z) 3.00 [2.97, 3.03] → 1.00 [0.99, 1.01]: lower" in text
    assert "the mean readability of the factor levels 0.600 [0.594, 0.606] → 0.600 [0.594, 0.606]: no measurable " \
           "difference" in text
    assert "traded visual quality" in text and "for organisation" in text
    assert "axis-aligned" not in text  # concentration 0.4: not small
    small = report.summary([row(1, factor=0.005), row(5, factor=0.008)])
    assert "Neither code is axis-aligned: the mean concentration stays at or below 0.008" in small
    # The same centres with wide intervals: every interval overlaps, so no direction and no trade is claimed.
    wide = report.summary([row(1, rate=120.0, psnr_db=21.0, fcd=40.0, tc=3.0, factor=0.2, half=0.9),
                           row(5, rate=30.0, psnr_db=18.0, fcd=60.0, tc=1.0, factor=0.4, half=0.9)])
    assert ": higher" not in wide and ": lower" not in wide and "traded" not in wide
    assert "No quality or organisation number moved measurably" in wide
    # Separated intervals but a change within twice the measured seed spread: no direction.
    spread = report.summary([lo, hi], spread={"test_psnr": 2.0})
    assert "18.00 [17.82, 18.18]: no measurable difference" in spread and "seed-to-seed spread" in spread


def test_summary_verdict_follows_the_numbers():
    better_both = report.summary([row(1, psnr_db=18.0, fcd=60.0, tc=3.0), row(5, psnr_db=21.0, fcd=40.0, tc=1.0)])
    assert "traded" not in better_both and "better" in better_both and "worse" not in better_both
    one = report.summary([row(1)])
    assert "Only β = 1 is listed" in one


def test_summary_numbers_come_from_rows_and_stay_short():
    rows = [row(1, rate=123.4, psnr_db=21.07, fcd=41.3, tc=2.22), row(2, rate=77.7, psnr_db=19.55, fcd=35.5),
            row(5, rate=31.2, psnr_db=18.03, fcd=52.2, tc=0.99)]
    text = report.summary(rows)
    assert len(text.split()) <= 300
    allowed = {"95"}
    for r in rows:
        for v in r.values():
            if isinstance(v, (int, float)):
                allowed |= {f"{v:g}", f"{v:.0f}", f"{v:.1f}", f"{v:.2f}", f"{v:.3f}", f"{round(v)}"}
    for number in re.findall(r"\d+(?:\.\d+)?", text):
        assert number in allowed, f"{number} in the summary is not a measured number"


def test_render_has_tables_with_intervals_figures_and_side_by_side():
    rows = [row(1, rate=120.0), row(5, rate=30.0, au=12)]
    md = report.render(rows, {"1": "figures/beta_1", "5": "figures/beta_5"},
                       {"n_train": 50000, "n_test": 10000, "epochs": 20, "seed": 0, "choices": ["z = 64"]},
                       REFERENCE, {"rate_distortion": "comparison/rd.png", "kl_per_dim": "comparison/kl.png",
                                   "traversals": "comparison/tr.png"})
    assert "| 1 | 6.400 [6.336, 6.464] | 6.350 [6.286, 6.413] | 120.0 [118.8, 121.2] | 120.0 |" in md
    assert "| real train images (reference) | 0.50 |" in md and "| β = 5: z ~ N(0, I) decoded | 40.00 [39.60, 40.40] |" in md
    assert "| β = 1: ex-post sampler | 32.00 [31.68, 32.32] |" in md and "| β = 1: reconstructions | 20.00 [19.80, 20.20] |" in md
    assert "| 5 | 12 [12, 12] | 6 [6, 6] |" in md  # active units at each threshold
    assert "| rotation, β = 5 | 0.300 [0.297, 0.303] | 0.500 [0.495, 0.505] |" in md
    assert "(comparison/rd.png)" in md and "(comparison/kl.png)" in md and "(comparison/tr.png)" in md
    assert "87.0% test accuracy" in md
    for stem, _ in report.FIGURES:
        assert f"(figures/beta_1/{stem}.png)" in md and f"(figures/beta_5/{stem}.png)" in md
    assert "| β = 1: sampler | β = 1: z ~ N(0, I) | β = 5: sampler | β = 5: z ~ N(0, I) |" in md
    assert md.index("## Samples") < md.index("## Summary")  # the report opens with the pictures
    # The audit network's and the sharpness measure's table, with the real-image row when the audit's metrics are given.
    assert "| β = 1: ex-post sampler | 60.00 [59.40, 60.60] | – | 0.550 [0.545, 0.555] | – | 0.400 [0.396, 0.404] |" in md
    assert "| β = 5: reconstructions | 40.00 [39.60, 40.40] | – | – | – | 0.500 [0.495, 0.505] |" in md
    with_audit = report.render(rows, {"1": "figures/beta_1", "5": "figures/beta_5"},
                               {"n_train": 50000, "n_test": 10000, "epochs": 20, "seed": 0, "choices": []},
                               REFERENCE, {"rate_distortion": "r", "kl_per_dim": "k", "traversals": "t"},
                               audit_reference={**REFERENCE, "real_fcd": 0.7})
    assert "| real train images (reference) | 0.70 | 0.000 | 0.900 | 3.32 | – |" in with_audit
    assert "target" not in md.lower() and "issue" not in md.lower()  # product, not project history


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


def preset(name, description, betas_rows, judge_md5="j", seeds=(0,)):
    return {"preset": name, "description": description, "judge_md5": judge_md5, "seeds": list(seeds),
            "model": {"latent_dim": 128, "likelihood": "gaussian", "res_blocks": 0},
            "train": {"epochs": 6, "mmd_weight": 0.0, "ema_decay": 0.0, "kl_warmup_epochs": 0.0},
            "betas": [{"beta": r["beta"], "seed": seed, "train": {"train_seconds": 60.0 * r["train_minutes"]},
                       "eval": {k: v for k, v in r.items() if k not in ("train_minutes", "tag")}}
                      for r, seed in betas_rows]}


def test_ablation_follows_the_presets_and_labels_the_default():
    default = [row(1, fcd=90.0), row(5, fcd=95.0)]
    base = preset("baseline", "", [(row(1, fcd=200.0), 0), (row(5, fcd=210.0), 0)])
    step = preset("baseline-mmd", "+ MMD", [(row(1, fcd=150.0), 0)])
    lines = "\n".join(report.ablation_section(default, [base, step], "j"))
    # The ablation rows run baseline -> each preset -> final default, at β = 1.
    assert lines.index("`baseline`") < lines.index("`baseline-mmd`: + MMD | 150.0") < lines.index("**final default**")
    assert "z = 128, N(0, I) prior, gaussian, 0 res. blocks, 6 epochs" in lines  # no description: the recipe
    recipe = {"model": {**base["model"], "latent_dim": 64}, "train": {**base["train"], "epochs": 24, "betas": [1]}}
    labelled = report.ablation_table([base, step], default[0], recipe)
    assert "| **final default**: baseline with model.latent_dim = 64, train.epochs = 24 | 90.0 [89.1, 90.9] |" in labelled
    assert "Warning" not in lines
    stale = "\n".join(report.ablation_section(default, [base], "other-judge"))
    assert "**Warning:** judged by another judge model than this run's: baseline." in stale
    none = "\n".join(report.ablation_section(default, [], "j"))
    assert "None has been run yet" in none and "|" not in none
    # An old results file without the newer keys shows a dash, not an error.
    old = preset("old", "before the sampler stage", [({k: v for k, v in row(1).items() if "sampler" not in k}, 0)])
    assert "| `old`: before the sampler stage | 40.0 [39.6, 40.4] | – |" in report.ablation_table([old], default[0])


def test_seed_spread_is_measured_from_a_multi_seed_preset():
    spread_preset = preset("seed-spread", "three seeds", [(row(1, fcd=40.0), 0), (row(1, fcd=44.0), 1),
                                                          (row(1, fcd=42.0), 2), (row(5, fcd=50.0), 0),
                                                          (row(5, fcd=50.0), 1), (row(5, fcd=50.0), 2)],
                           seeds=(0, 1, 2))
    p, spread = report.seed_spread([preset("baseline", "", [(row(1), 0)]), spread_preset])
    assert p is spread_preset
    assert spread["fcd"] == pytest.approx(2.0)  # sd of 40, 44, 42; β = 5 has none
    table = report.spread_table(spread_preset)
    assert "| β = 1 (3 seeds) | 6.400 ± 0.000 |" in table and "42.00 ± 2.00" in table
    assert report.seed_spread([preset("baseline", "", [(row(1), 0)])]) == (None, {})
    # The multi-seed preset is not an ablation row.
    assert "seed-spread" not in "\n".join(report.ablation_section([row(1)], [spread_preset], "j"))


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
                              gmm, 0, torch.device("cpu"))
    assert "z = f(e), e ~ N(0, I)" in figs["prior_samples"]._suptitle.get_text()
    assert "prior flow" in figs["interpolation_prior"]._suptitle.get_text()


def test_a_recipe_change_counts_only_where_judge_audit_and_sharpness_agree():
    ref = row(1, fcd=40.0)  # sampler_fcd 32, audit_sampler_fcd 60, sampler_sharpness_ratio 0.4
    better = row(1, fcd=20.0)
    better |= {"sampler_sharpness_ratio": 0.6, "sampler_sharpness_ratio_lo": 0.59, "sampler_sharpness_ratio_hi": 0.61,
               "recon_sharpness_ratio": 0.7, "recon_sharpness_ratio_lo": 0.69, "recon_sharpness_ratio_hi": 0.71}
    fooled = dict(better) | {"audit_sampler_fcd": 80.0, "audit_sampler_fcd_lo": 79.0, "audit_sampler_fcd_hi": 81.0}
    said, verdict = report.agreement(ref, better, "sampler_")
    assert said == ["lower", "lower", "closer to 1"] and verdict == "**better**"
    said, verdict = report.agreement(ref, fooled, "sampler_")  # the judge alone improved: it does not count
    assert said == ["lower", "higher", "closer to 1"] and verdict == "no agreement"
    assert report.agreement(ref, ref, "recon_")[1] == "no agreement"
    assert report.agreement({"beta": 1}, better, "sampler_") == (["–"] * 3, "not measured")
    table = report.agreement_table([preset("plain", "", [(ref, 0)]), preset("sharp", "", [(better, 0)]),
                                    preset("fooled", "", [(fooled, 0)])])
    assert "| `sharp` | `plain` (no model or train key) | lower | lower | closer to 1 | **better** |" in table
    assert "| `fooled` | `plain` (no model or train key) | lower | higher | closer to 1 | no agreement |" in table
    # The reference is the earlier preset whose recipe differs least: a change on top of `sharp` is judged against it.
    on_top = preset("on-top", "", [(fooled, 0)])
    on_top["train"] = {**on_top["train"], "mmd_weight": 1.0}
    sharp = preset("sharp", "", [(better, 0)])
    sharp["train"] = {**sharp["train"], "mmd_weight": 1.0}
    table = report.agreement_table([preset("plain", "", [(ref, 0)]), sharp, on_top])
    assert "| `sharp` | `plain` (train.mmd_weight = 1) |" in table and "| `on-top` | `sharp` (no model or train key) |" in table
    # Another budget has its own reference: nothing to compare with one preset alone.
    other = preset("long", "", [(better, 0)])
    other["train"] = {**other["train"], "epochs": 20}
    assert "`long`" not in report.agreement_table([preset("plain", "", [(ref, 0)]), other])
