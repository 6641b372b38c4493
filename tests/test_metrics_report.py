"""Evaluation metrics, figures and the report on known inputs."""
from __future__ import annotations

import base64
import dataclasses
import math
import re

import pandas as pd
import pytest
import torch

from conftest import REPO
from vaelab import claims, comparison_plots, density, plots, report, samplers, tables, webpage
from vaelab.data import CIFAR10
from vaelab.metrics import decode_uint8, likelihood_metrics, per_image, psnr
from vaelab.model import VAE
from vaelab.organisation import active_units
from vaelab.params import FiguresConfig, ModelConfig, TrainConfig
from vaelab.train import train

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


def figure_inputs(g: torch.Generator) -> tuple[CIFAR10, pd.DataFrame, pd.DataFrame]:
    """A 30-image test set, 20 training images, and the per-epoch and per-step curves of a real two-epoch training
    of a tiny Gaussian-decoder VAE on them (perceptual term off, an MMD term on), for make_figures."""
    ds = CIFAR10(torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(20) % 10,
                 torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.arange(30) % 10, tuple(f"class{i}" for i in range(10)))
    states = []
    torch.manual_seed(0)
    gaussian = dataclasses.replace(SMALL, likelihood="gaussian", sigma="global")
    history = train(VAE(gaussian), ds.train_x, ds.test_x, 2.0, TrainConfig(epochs=2, batch_size=4, warmup_steps=2,
                                                                        mmd_weight=10.0, log_every=2, bf16=False),
                    seed=0, device=torch.device("cpu"), on_epoch=lambda row, state: states.append(state),
                    progress=False)
    return ds, pd.DataFrame(history), pd.DataFrame(states[-1]["steps"])


def brightness_judge(images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in judge of known answers: class 0 for dark images, 1 for bright ones, surer the further the mean
    pixel is from the middle grey."""
    mean = images_u8.float().mean((1, 2, 3)) / 255  # (N,) in [0, 1]
    return (mean > 0.5).long(), 0.5 + (mean - 0.5).abs()


class BrightnessDecoder(torch.nn.Module):
    """A decoder of known answers: a grey image whose brightness is tanh(z_0) on the [-1, 1] scale."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (self.gain * torch.tanh(z[:, :1]))[:, :, None, None].expand(-1, 3, 32, 32)  # (B, 3, 32, 32)


def test_the_class_interpolation_joins_the_surest_draws_of_two_classes_and_labels_every_frame():
    """The stand-in judge is surest of the most extreme brightness: the line runs from the draw of most extreme
    z_0 to the most extreme one of the other sign, and each frame's label is the judge's verdict on that frame (dark
    while z_0 < 0, then bright)."""
    pool = torch.randn(64, 6, generator=torch.Generator().manual_seed(3))
    fig = plots.class_interpolation(BrightnessDecoder(), lambda n, g: pool[:n], brightness_judge, ("dark", "bright"),
                                    7, seed=0, title="t")
    a = int(pool[:, 0].abs().argmax())
    other = pool[:, 0].sign() != pool[a, 0].sign()
    b = int(torch.where(other, pool[:, 0].abs(), -1.0).argmax())
    line = plots.lerp(pool[a], pool[b], 7)[:, 0]  # z_0 along the line
    expected = ["bright" if v > 0 else "dark" for v in line.tolist()]
    shown = [lbl.get_text().split("\n")[0] for lbl in fig.axes[0].get_xticklabels()]
    assert shown == expected and shown[0] != shown[-1]
    assert f"from a {expected[0]} to a {expected[-1]}" in fig._suptitle.get_text()
    one_class = plots.class_interpolation(BrightnessDecoder(), lambda n, g: pool[:n],
                                          lambda x: (torch.zeros(len(x), dtype=torch.long), torch.rand(len(x))),
                                          ("dark", "bright"), 5, 0, "t")
    assert "all 64 draws are one class, dark" in one_class._suptitle.get_text()


def test_the_plotted_total_is_the_sum_of_the_plotted_terms():
    """Each training row's loss is the sum of its weighted terms, and the curves figure draws exactly those: the
    line labelled as the total equals the sum of the term lines, point by point; the test points likewise."""
    _, history, steps = figure_inputs(torch.Generator().manual_seed(1))
    assert steps["step"].tolist() == [2, 4, 5, 6, 8, 10]  # every 2nd step and each epoch's end (5 steps an epoch)
    fig = plots.training_curves(history, steps, 2.0, 0.0, 10.0, "t")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    terms = [lines[label] for key, label in plots.OBJECTIVE_LABELS if label in lines]
    assert [ln.get_label() for ln in terms] == ["reconstruction −log p(x|z)", "β·KL(q(z|x) ‖ p(z))", "MMD term"]
    total = lines["total loss (sum of the terms)"].get_ydata()
    torch.testing.assert_close(torch.tensor(total), torch.tensor(sum(ln.get_ydata() for ln in terms)), rtol=1e-5,
                               atol=1e-3)
    markers = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "None"]  # total first, then each term
    torch.testing.assert_close(torch.tensor(markers[0].get_ydata()),
                               torch.tensor(sum(m.get_ydata() for m in markers[1:])), rtol=1e-5, atol=1e-3)
    # The learning rate and the decoder's σ̂ are drawn per step; σ̂ is the learned one (it moved from exp(-2)).
    assert list(fig.axes[3].get_lines()[0].get_ydata()) == steps["lr"].tolist()
    assert steps["sigma"].iloc[-1] != pytest.approx(math.exp(-2.0))
    assert history["sigma"].iloc[-1] == steps["sigma"].iloc[-1]


def test_make_figures_builds_every_figure():
    torch.manual_seed(0)
    model = VAE(SMALL).eval()
    g = torch.Generator().manual_seed(0)
    ds, history, steps = figure_inputs(g)
    response = pd.DataFrame({"dim": range(6), "brightness": [0, 0, 5.0, 0, 0, 0.1], "flip": [1.0] * 6})
    gmm = density.fit_gmm(torch.randn(50, 6, generator=g), 3, 20)
    figs = plots.make_figures(model, ds, history, steps, [0.1 * j for j in range(6)], response, 1.0, 0.0, 10.0,
                              FiguresConfig(traversal_dims=3), lambda n, g: density.sample(gmm, n, g),
                              samplers.describe(gmm), brightness_judge, 0, torch.device("cpu"))
    assert set(figs) == {stem for stem, _ in report.FIGURES}
    assert "z ~ N(0, I)" in figs["prior_samples"]._suptitle.get_text()
    assert "ex-post sampler (3-component Gaussian mixture" in figs["sampler_samples"]._suptitle.get_text()
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
    fig = comparison_plots.rate_distortion(rows)
    ax = fig.axes[0]
    xs, ys = ax.lines[0].get_data()
    assert list(xs) == [120.0, 30.0] and list(ys) == [14000.0, 14200.0]
    # The iso-line of beta = 1: rate + distortion stays at its negative ELBO.
    lx, ly = ax.lines[1].get_data()
    assert all(abs(a + b - 14120.0) < 1e-6 for a, b in zip(lx, ly))
    bars = comparison_plots.kl_bars([(1.0, [0.5, 3.0, 1.0]), (5.0, [0.1, 0.2, 0.0])])
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
              "sampler_sharpness_ratio": 0.4, "recon_sharpness_ratio": 0.5, "total_correlation": tc,
              "factor_score": factor, "factor_r2": r2, "probe_accuracy": probe, "active_units_0p01": au,
              "active_units_0p1": au // 2,
              **{f"factor_score_{f}": factor for f in tables.FACTORS}, **{f"factor_r2_{f}": r2 for f in tables.FACTORS}}
    # Both samplers and their ceiling, each with its own numbers; sampler_* repeats the diffusion prior's.
    for prefix, scale in (("mixture_", 1.1), ("diffusion_", 1.0), ("ceiling_", 0.7)):
        values |= {prefix + k.removeprefix("sampler_"): scale * v for k, v in values.items()
                   if k.startswith("sampler_")}
        values |= {f"audit_{prefix}" + k.removeprefix("audit_sampler_"): scale * v for k, v in values.items()
                   if k.startswith("audit_sampler_")}
    out = {"beta": beta, "tag": f"{beta:g}", "latent_dim": 64, "active_units": au, "train_minutes": 10.0,
           "iw_samples": 64, "iw_images": 1000, "tc_batch_size": 2000, "tc_sampled": rate - 7.0,
           "tc_sampled_self_weight": 0.99, "kl_dims_sum_nats": rate, "kid": 0.04, "kid_std": 0.001,
           "sampler_kid": 0.03, "mixture_kid": 0.033, "diffusion_kid": 0.03, "ceiling_kid": 0.021, "recon_kid": 0.02,
           "sampler_kind": "diffusion", "n_samples": 10000, "n_test_images": 10000, "bootstrap_reps": 200}
    for key, v in values.items():
        out |= {key + end: x for end, x in ci(v, abs(v) * half).items()}
    return out


REFERENCE = {"test_accuracy": 0.87, "train_seconds": 200.0, "epochs": 8, "n_real": 10000, "real_fcd": 0.5,
             "real_kid": 0.0001, "real_kid_std": 0.0001, "real_judge_confidence": 0.9, "real_class_entropy": 3.32}
FIGURE_DIRS = {"1": "figures/beta_1", "5": "figures/beta_5"}
SETUP = {"n_train": 50000, "n_test": 10000, "epochs": 20, "seed": 0, "choices": ["z = 64"]}
LINKS = {"rate_distortion": "comparison/rd.png", "kl_per_dim": "comparison/kl.png", "traversals": "comparison/tr.png"}


def md_tables(md: str) -> list[list[dict[str, str]]]:
    """Every markdown table of `md`: one dict per body row, header -> cell text (a header's second use: `header#2`)."""
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip()[1:-1].split("|")]

    lines, found, i = md.splitlines(), [], 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.fullmatch(r"\|(:?-+:?\|)+", lines[i + 1]):
            heads = cells(lines[i])
            heads = [h if h not in heads[:j] else f"{h}#{heads[:j].count(h) + 1}" for j, h in enumerate(heads)]
            body, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                body.append(dict(zip(heads, cells(lines[i]), strict=True)))
                i += 1
            found.append(body)
        else:
            i += 1
    return found


def md_table(md: str, header: str) -> list[dict[str, str]]:
    """The one table of `md` that has a column `header`."""
    [found] = [t for t in md_tables(md) if t and header in t[0]]
    return found


def shown(r: dict, key: str, fmt: str) -> str:
    """What a table cell must show for `key` of row `r`: the value and, where the row has one, its interval."""
    text = fmt.format(r[key])
    return text + f" [{fmt.format(r[key + '_lo'])}, {fmt.format(r[key + '_hi'])}]" if key + "_lo" in r else text


def test_table_cell_shows_value_and_interval_and_the_missing_mark():
    rows = [{"x": 1.23456, "x_lo": 1.2, "x_hi": 1.3, "n": 11.6, "n_lo": 10.4, "n_hi": 12.6}, {"x": 2.0}, {}]
    md = tables.table(rows, [("x", "X", "{:.2f}"), ("n", "N", "{:d}")], ("run", ["a", "b", "c"]))
    assert md_tables(md) == [[{"run": "a", "X": "1.23 [1.20, 1.30]", "N": "12 [10, 13]"},
                              {"run": "b", "X": "2.00", "N": claims.MISSING},
                              {"run": "c", "X": claims.MISSING, "N": claims.MISSING}]]


def test_render_tables_show_every_beta_value_and_interval_from_the_input():
    rows = [row(5, rate=30.0, psnr_db=18.0, fcd=60.0, au=12), row(1, rate=120.0)]  # unsorted: the report sorts
    md = report.render(rows, FIGURE_DIRS, SETUP, REFERENCE, LINKS)
    by_beta = {r["beta"]: r for r in rows}
    for header, columns in (("test bits/dim ↓", tables.LIKELIHOOD_COLUMNS),
                            ("Gaussian TC of q(z) (nats) ↓", tables.ORGANISATION_COLUMNS)):
        shown_rows = md_table(md, header)
        assert [t["β"] for t in shown_rows] == ["1", "5"]
        for t in shown_rows:
            r = by_beta[float(t["β"])]
            assert all(t[h] == shown(r, k, fmt) for k, h, fmt in columns), t
    # Sample quality: the real-image row, then each image set of each beta, numbers from that set's keys.
    quality = {t["images"]: t for t in md_table(md, "judge confidence ↑")}
    assert list(quality)[0] == "real train images (reference)"
    assert quality["real train images (reference)"]["FCD ↓"] == f"{REFERENCE['real_fcd']:.2f}"
    for beta, r in by_beta.items():
        for prefix, what in tables.IMAGE_SETS:
            t = quality[f"β = {beta:g}: {what}"]
            assert t["FCD ↓"] == shown(r, f"{prefix}fcd", "{:.2f}") and t["KID ↓"] == f"{r[prefix + 'kid']:.3f}"
    # The audit's table: no real-image row without the audit's metrics; a key the row lacks shows the mark.
    audit = {t["images"]: t for t in md_table(md, "audit FCD ↓")}
    assert "real train images (reference)" not in audit
    t = audit["β = 1: diffusion sampler"]
    assert t["audit FCD ↓"] == shown(by_beta[1], "audit_diffusion_fcd", "{:.2f}")
    assert t["audit KID ↓"] == claims.MISSING
    assert t["sharpness ratio (real = 1)"] == shown(by_beta[1], "diffusion_sharpness_ratio", "{:.3f}")
    assert audit["β = 1: mixture sampler"]["audit FCD ↓"] == shown(by_beta[1], "audit_mixture_fcd", "{:.2f}")
    assert audit["β = 1: z ~ N(0, I) decoded"]["audit FCD ↓"] == shown(by_beta[1], "audit_fcd", "{:.2f}")
    assert audit["β = 5: reconstructions"]["audit confidence ↑"] == claims.MISSING
    with_audit = report.render(rows, FIGURE_DIRS, SETUP, REFERENCE, LINKS,
                               audit_reference={**REFERENCE, "real_fcd": 0.7})
    assert md_table(with_audit, "audit FCD ↓")[0]["audit FCD ↓"] == "0.70"
    # Active units: one column per measured threshold, in numeric order, whole numbers.
    units = md_table(md, "Var(μ_j) > 0.01")
    assert list(units[0]) == ["β", "Var(μ_j) > 0.01", "Var(μ_j) > 0.1"]
    assert units[1]["Var(μ_j) > 0.1"] == "6 [6, 6]"  # β = 5: 12 // 2
    # Factors: one row per controlled factor and beta.
    factors = md_table(md, "readability (held-out R²) ↑")
    assert [t["factor"] for t in factors] == [f"{f}, β = {b}" for f in tables.FACTORS for b in (1, 5)]
    assert factors[0]["concentration (top-2 share gap) ↑"] == shown(by_beta[1], "factor_score_brightness", "{:.3f}")


def test_the_decoder_table_puts_each_decoders_numbers_of_the_same_codes_side_by_side():
    rows = [row(5, fcd=60.0), row(1)]
    assert "## The decoder" not in report.render(rows, FIGURE_DIRS, SETUP, REFERENCE, LINKS)  # no decoder stage ran
    for r in rows:
        # The decoder as trained: its own numbers (FCD 1.5 times the fine-tuned one's), the VAE's PSNR.
        r |= {f"trained_{k}": 1.5 * v for k, v in list(r.items()) if k.startswith(
            ("mixture_", "diffusion_", "ceiling_", "recon_"))}
        r |= {k.replace("test_psnr", "tuned_test_psnr"): v - 0.5 for k, v in list(r.items())
              if k.startswith("test_psnr")}
        r |= {"finetune_steps": 600, "finetune_batch_size": 64, "finetune_seconds": 300.0, "finetune_disc_weight": 0.5,
              "finetune_last_lambda": 254.0, "finetune_summary_steps": 50, "finetune_last_d_real": 1.1,
              "finetune_last_d_fake": -0.9}
    md = report.render(rows, FIGURE_DIRS, SETUP, REFERENCE, LINKS)
    assert "## The decoder: as trained and fine-tuned" in md and "600 steps of 64 in 5.0 min" in md
    shown_rows = {t["images"]: t for t in md_table(md, "sharpness (real = 1)")}
    assert len(shown_rows) == 2 * len(tables.DECODER_SETS) * len(tables.DECODERS)
    for r in rows:
        for prefix, what in tables.DECODER_SETS:
            for decoder, name in tables.DECODERS:
                t = shown_rows[f"β = {r['beta']:g}: {what}, decoder {name}"]
                assert t["FCD ↓"] == shown(r, f"{decoder}{prefix}fcd", "{:.2f}"), (decoder, prefix)
                assert t["sharpness (real = 1)"] == shown(r, f"{decoder}{prefix}sharpness_ratio", "{:.3f}")
        recon = {name: shown_rows[f"β = {r['beta']:g}: reconstructions, decoder {name}"] for _, name in tables.DECODERS}
        assert recon["as trained"]["PSNR (dB) ↑"] == shown(r, "test_psnr", "{:.2f}")
        assert recon["fine-tuned"]["PSNR (dB) ↑"] == shown(r, "tuned_test_psnr", "{:.2f}")
        assert shown_rows[f"β = {r['beta']:g}: ceiling, decoder as trained"]["PSNR (dB) ↑"] == claims.MISSING


def test_render_keeps_every_section_and_figure():
    rows = [row(1, rate=120.0), row(5, rate=30.0)]
    md = report.render(rows, FIGURE_DIRS, SETUP, REFERENCE, LINKS)
    headings = re.findall(r"^## (.+)$", md, re.M)
    assert headings == ["Samples", "Summary", "Traversals", "Likelihood and reconstruction", "Sample quality",
                        "Organisation of the latent space", "Ablation", "Rate–distortion plane and KL per dimension",
                        "Model and training choices", "β = 1", "β = 5"]
    assert "(comparison/rd.png)" in md and "(comparison/kl.png)" in md and "(comparison/tr.png)" in md
    for stem, _ in report.FIGURES:
        assert f"(figures/beta_1/{stem}.png)" in md and f"(figures/beta_5/{stem}.png)" in md
    # The report opens with the samples of every beta side by side.
    assert list(md_tables(md)[0][0]) == ["β = 1: sampler", "β = 1: z ~ N(0, I)",
                                         "β = 5: sampler", "β = 5: z ~ N(0, I)"]
    assert "87.0% test accuracy" in md and "- z = 64" in md
    assert "target" not in md.lower() and "issue" not in md.lower()  # product, not project history


def test_render_links_the_metric_definitions_instead_of_repeating_them():
    md = report.render([row(1), row(5)], FIGURE_DIRS, SETUP, REFERENCE, LINKS)
    doc = REPO / "reports" / report.METRICS_DOC
    assert doc.resolve() == (REPO / "docs" / "metrics.md").resolve() and doc.is_file()
    slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-")
             for h in re.findall(r"^#+ (.+)$", doc.read_text(), re.M)}
    anchors = re.findall(r"\]\(\.\./docs/metrics\.md#([^)]+)\)", md)
    assert {"intervals", "likelihood-and-reconstruction", "sample-quality", "the-audit-and-the-sharpness-ratio",
            "organisation-of-the-code"} <= set(anchors) <= slugs
    # The definitions live in docs/metrics.md only: no citations or formulas in the report.
    assert "et al." not in md and "log det" not in md and "Nyquist" not in md


def separated(a: dict, b: dict, key: str) -> bool:
    return a[key + "_hi"] < b[key + "_lo"] or b[key + "_hi"] < a[key + "_lo"]


def test_summary_names_a_direction_only_where_intervals_separate():
    lo = row(1, rate=120.0, psnr_db=21.0, fcd=40.0, tc=3.0, factor=0.2, r2=0.6, probe=0.45)
    hi = row(5, rate=30.0, psnr_db=18.0, fcd=60.0, tc=1.0, factor=0.4, r2=0.6, probe=0.45)
    text = claims.summary([hi, lo])
    said = claims.verdicts(lo, hi, claims.QUALITY) + claims.verdicts(lo, hi, claims.ORGANISATION)
    assert {v.key for v in said} == {k for k, _, _, _ in claims.QUALITY + claims.ORGANISATION}
    for v in said:
        assert v.text in text and v.text.endswith(f": {v.how}")
        assert f"{lo[v.key]:.1f}" in v.text or f"{lo[v.key]:.3f}" in v.text  # the numbers come from the rows
        if separated(lo, hi, v.key):
            assert v.how == ("higher" if hi[v.key] > lo[v.key] else "lower")
        else:
            assert v.how == claims.NO_DIFFERENCE and v.better is None
    assert {v.key: v.better for v in said if v.better is not None} == {
        "test_psnr": False, "fcd": False, "sampler_fcd": False, "recon_fcd": False,
        "total_correlation": True, "factor_score": True}
    assert "traded visual quality" in text and "for organisation" in text
    assert "axis-aligned" not in text  # concentration 0.4: not small
    small = claims.summary([row(1, factor=0.005), row(5, factor=0.008)])
    assert "Neither code is axis-aligned" in small and "0.008" in small
    # The same centres with wide intervals: every interval overlaps, so no direction and no trade is claimed.
    wide = claims.summary([row(1, rate=120.0, psnr_db=21.0, fcd=40.0, tc=3.0, factor=0.2, half=0.9),
                           row(5, rate=30.0, psnr_db=18.0, fcd=60.0, tc=1.0, factor=0.4, half=0.9)])
    assert ": higher" not in wide and ": lower" not in wide and "traded" not in wide
    assert wide.count(claims.NO_DIFFERENCE) == len(said)
    assert "No quality or organisation number moved measurably" in wide
    # Separated intervals but a change within twice the measured seed spread: no direction.
    psnr_said = claims.verdicts(lo, hi, claims.QUALITY, spread={"test_psnr": 2.0})
    assert next(v for v in psnr_said if v.key == "test_psnr").how == claims.NO_DIFFERENCE
    assert "seed-to-seed spread" in claims.summary([lo, hi], spread={"test_psnr": 2.0})


def test_summary_verdict_follows_the_numbers():
    better_both = claims.summary([row(1, psnr_db=18.0, fcd=60.0, tc=3.0), row(5, psnr_db=21.0, fcd=40.0, tc=1.0)])
    assert "traded" not in better_both and "better" in better_both and "worse" not in better_both
    worse_both = claims.summary([row(1, psnr_db=21.0, fcd=40.0, tc=1.0), row(5, psnr_db=18.0, fcd=60.0, tc=3.0)])
    assert "traded" not in worse_both and "worse" in worse_both and "better" not in worse_both
    one = claims.summary([row(1)])
    assert "Only β = 1 is listed" in one and "no comparison" in one


def test_summary_numbers_come_from_rows_and_stay_short():
    rows = [row(1, rate=123.4, psnr_db=21.07, fcd=41.3, tc=2.22), row(2, rate=77.7, psnr_db=19.55, fcd=35.5),
            row(5, rate=31.2, psnr_db=18.03, fcd=52.2, tc=0.99)]
    text = claims.summary(rows)
    assert len(text.split()) <= 300
    allowed = {"95"}
    for r in rows:
        for v in r.values():
            if isinstance(v, (int, float)):
                allowed |= {f"{v:g}", f"{v:.0f}", f"{v:.1f}", f"{v:.2f}", f"{v:.3f}", f"{round(v)}"}
    for number in re.findall(r"\d+(?:\.\d+)?", text):
        assert number in allowed, f"{number} in the summary is not a measured number"
    assert report.render(rows, {"1": "f1", "2": "f2", "5": "f5"}, SETUP, REFERENCE, LINKS).count(text) == 1


def test_html_report_embeds_every_image_and_renders_tables():
    png = {"figures/beta_1/a.png": b"\x89PNG-one", "comparison/b c.png": b"\x89PNG-two"}
    md = ("# Title\n\n| β | bits/dim |\n|---:|---:|\n| 1 | 6.161 |\n| 5 | 6.175 |\n\n"
          "![first](figures/beta_1/a.png)\n\n![second](comparison/b c.png)\n\nA [link](other.md) stays a link.\n")
    read = []
    page = webpage.to_html(md, lambda link: read.append(link) or png[link])
    assert sorted(read) == sorted(png)
    embedded = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(png.values())
    assert not re.search(r'src="(?!data:)', page)
    assert re.search(r"<th[^>]*>β</th>", page) and "<td" in page and "6.175" in page
    assert '<a href="other.md">link</a>' in page
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page


def test_html_report_names_a_missing_image():
    def read(link):
        raise FileNotFoundError(f"no such figure: {link}")

    with pytest.raises(FileNotFoundError, match="x.png"):
        webpage.to_html("![x](x.png)\n", read)


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
    recipe = {"model": {**base["model"], "latent_dim": 64}, "train": {**base["train"], "epochs": 24, "betas": [1]}}
    shown_rows = md_table("\n".join(report.ablation_section(default, [base, step], "j", recipe)), "FCD, sampler ↓")
    # The ablation rows run baseline -> each preset -> final default, at the β nearest 1, numbers from each run.
    labels = [t["recipe (β = 1)"] for t in shown_rows]
    assert labels[0].startswith("`baseline`: z = 128, N(0, I) prior") and "6 epochs" in labels[0]  # no description
    assert labels[1] == "`baseline-mmd`: + MMD"
    assert labels[2] == "**final default**: baseline with model.latent_dim = 64, train.epochs = 24"
    # A run whose decoder was fine-tuned against a preset measured before the decoder stage: a change of its own;
    # against a preset with the same fine-tune, only the keys that differ.
    tuned = {**recipe, "decoder": {"steps": 600, "disc_weight": 0.5}}
    final = md_table("\n".join(report.ablation_section(default, [base], "j", tuned)), "FCD, sampler ↓")[-1]
    assert final["recipe (β = 1)"] == ("**final default**: baseline with decoder fine-tuned (decoder@β), "
                                       "model.latent_dim = 64, train.epochs = 24")
    base_tuned = {**base, "decoder": {"steps": 300, "disc_weight": 0.5}}
    final = md_table("\n".join(report.ablation_section(default, [base_tuned], "j", tuned)), "FCD, sampler ↓")[-1]
    assert final["recipe (β = 1)"] == ("**final default**: baseline with model.latent_dim = 64, train.epochs = 24, "
                                       "decoder.steps = 600")
    assert [t["FCD, z ~ N(0, I) ↓"].split()[0] for t in shown_rows] == ["200.0", "150.0", "90.0"]
    assert shown_rows[2]["FCD, z ~ N(0, I) ↓"] == shown(default[0], "fcd", "{:.1f}")
    lines = "\n".join(report.ablation_section(default, [base, step], "j"))
    assert "Warning" not in lines and "(params.yaml `model`, `train`)" in lines  # no recipe: nothing to compare
    stale = "\n".join(report.ablation_section(default, [base], "other-judge"))
    assert "**Warning:**" in stale and "baseline." in stale
    none = "\n".join(report.ablation_section(default, [], "j"))
    assert "None has been run yet" in none and "|" not in none
    # An old results file without the newer keys shows the mark, not an error.
    old = preset("old", "before the sampler stage", [({k: v for k, v in row(1).items() if "sampler" not in k}, 0)])
    first = md_table(tables.ablation_table([old], default[0]), "FCD, sampler ↓")[0]
    assert first["FCD, sampler ↓"] == claims.MISSING
    assert first["FCD, z ~ N(0, I) ↓"] == shown(row(1), "fcd", "{:.1f}")


def test_seed_spread_is_measured_from_a_multi_seed_preset():
    spread_preset = preset("seed-spread", "three seeds", [(row(1, fcd=40.0), 0), (row(1, fcd=44.0), 1),
                                                          (row(1, fcd=42.0), 2), (row(5, fcd=50.0), 0),
                                                          (row(5, fcd=50.0), 1), (row(5, fcd=50.0), 2)],
                           seeds=(0, 1, 2))
    p, spread = claims.seed_spread([preset("baseline", "", [(row(1), 0)]), spread_preset])
    assert p is spread_preset
    assert spread["fcd"] == pytest.approx(2.0)  # sd of 40, 44, 42; β = 5 has none
    shown_rows = md_table(tables.spread_table(spread_preset), "FCD, z ~ N(0, I)")
    assert [t["run"] for t in shown_rows] == ["β = 1 (3 seeds)", "β = 5 (3 seeds)"]
    assert [t["FCD, z ~ N(0, I)"] for t in shown_rows] == ["42.00 ± 2.00", "50.00 ± 0.00"]
    assert shown_rows[0]["test bits/dim"] == "6.400 ± 0.000"
    assert claims.seed_spread([preset("baseline", "", [(row(1), 0)])]) == (None, {})
    # The multi-seed preset is not an ablation row; it gets its own section.
    assert "seed-spread" not in "\n".join(report.ablation_section([row(1)], [spread_preset], "j"))
    md = report.render([row(1), row(5)], FIGURE_DIRS, SETUP, REFERENCE, LINKS, [spread_preset], "j")
    assert "## Seed-to-seed spread" in md and md_table(md, "FCD, z ~ N(0, I)") == shown_rows


def test_a_recipe_change_counts_only_where_judge_audit_and_sharpness_agree():
    ref = row(1, fcd=40.0)  # sampler_fcd 32, audit_sampler_fcd 60, sampler_sharpness_ratio 0.4
    better = row(1, fcd=20.0)
    better |= {"sampler_sharpness_ratio": 0.6, "sampler_sharpness_ratio_lo": 0.59, "sampler_sharpness_ratio_hi": 0.61,
               "recon_sharpness_ratio": 0.7, "recon_sharpness_ratio_lo": 0.69, "recon_sharpness_ratio_hi": 0.71}
    fooled = dict(better) | {"audit_sampler_fcd": 80.0, "audit_sampler_fcd_lo": 79.0, "audit_sampler_fcd_hi": 81.0}
    said, verdict = claims.agreement(ref, better, "sampler_")
    assert said == ["lower", "lower", "closer to 1"] and verdict == "**better**"
    said, verdict = claims.agreement(ref, fooled, "sampler_")  # the judge alone improved: it does not count
    assert said == ["lower", "higher", "closer to 1"] and verdict == "no agreement"
    said, verdict = claims.agreement(better, ref, "sampler_")
    assert said == ["higher", "higher", "further from 1"] and verdict == "**worse**"
    assert claims.agreement(ref, ref, "recon_")[1] == "no agreement"
    assert claims.agreement({"beta": 1}, better, "sampler_") == ([claims.MISSING] * 3, "not measured")
    shown_rows = md_table(tables.agreement_table([preset("plain", "", [(ref, 0)]), preset("sharp", "", [(better, 0)]),
                                                  preset("fooled", "", [(fooled, 0)])]), "verdict")
    assert [(t["preset"], t["against (what differs)"]) for t in shown_rows] == [
        ("`sharp`", "`plain` (no model or train key)"), ("`fooled`", "`plain` (no model or train key)")]
    assert [t["verdict"] for t in shown_rows] == ["**better**", "no agreement"]  # the sampler's images
    assert [t["verdict#2"] for t in shown_rows] == ["**better**", "**better**"]  # the reconstructions
    # The reference is the earlier preset whose recipe differs least: a change on top of `sharp` is judged against it.
    on_top = preset("on-top", "", [(fooled, 0)])
    on_top["train"] = {**on_top["train"], "mmd_weight": 1.0}
    sharp = preset("sharp", "", [(better, 0)])
    sharp["train"] = {**sharp["train"], "mmd_weight": 1.0}
    pairs = claims.comparisons([preset("plain", "", [(ref, 0)]), sharp, on_top])
    assert [(c.preset["preset"], c.reference["preset"]) for c in pairs] == [("sharp", "plain"), ("on-top", "sharp")]
    against = [t["against (what differs)"] for t in md_table(tables.agreement_table([preset("plain", "", [(ref, 0)]),
                                                                                     sharp, on_top]), "verdict")]
    assert against == ["`plain` (train.mmd_weight = 1)", "`sharp` (no model or train key)"]
    # Another budget has its own reference: nothing to compare with one preset alone.
    other = preset("long", "", [(better, 0)])
    other["train"] = {**other["train"], "epochs": 20}
    assert claims.comparisons([preset("plain", "", [(ref, 0)]), other]) == []
    assert tables.agreement_table([preset("plain", "", [(ref, 0)]), other]) == ""


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
    ds, history, steps = figure_inputs(g)
    response = pd.DataFrame({"dim": range(6), "brightness": [1.0] * 6})
    gmm = density.fit_gmm(torch.randn(50, 6, generator=g), 2, 5)
    figs = plots.make_figures(model, ds, history, steps, [0.1] * 6, response, 1.0, 0.0, 10.0,
                              FiguresConfig(traversal_dims=2),
                              lambda n, g: density.sample(gmm, n, g), "a mixture", brightness_judge, 0,
                              torch.device("cpu"))
    assert "z = f(e), e ~ N(0, I)" in figs["prior_samples"]._suptitle.get_text()
    assert "prior flow" in figs["interpolation_prior"]._suptitle.get_text()
