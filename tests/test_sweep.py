"""The β sweep's own measurements on known answers, and the analysis the report writes from a sweep."""
from __future__ import annotations

import math

import pytest
import torch

from vaelab import claims, report, sweep
from vaelab.intervals import seed_sd
from vaelab.layout import SweepPaths
from vaelab.model import VAE
from vaelab.params import ModelConfig, Params, ParamsError, from_dict
from vaelab.stages import runtime


def test_effective_units_and_the_units_holding_90_percent():
    assert sweep.effective_units(torch.tensor([5.0, 0.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert sweep.effective_units(torch.ones(8)) == pytest.approx(8.0)
    # Two equal halves of the rate: exp(ln 2) = 2 units.
    assert sweep.effective_units(torch.tensor([3.0, 3.0, 0.0])) == pytest.approx(2.0)
    assert sweep.units_for_mass(torch.tensor([0.5, 9.0, 0.5]), 0.9) == 1
    assert sweep.units_for_mass(torch.ones(10), 0.9) == 9
    assert sweep.units_for_mass(torch.tensor([1.0, 1.0, 8.0]), 0.9) == 2
    per_image = torch.tensor([[1.0, 1.0, 0.0]]).repeat(50, 1)
    s = sweep.spectrum(per_image, 0.9, reps=20, seed=0)
    assert s["effective_units"] == pytest.approx(2.0) and s["units_90"] == 2
    assert s["effective_units_lo"] == pytest.approx(2.0) and s["effective_units_hi"] == pytest.approx(2.0)


def test_the_fixed_sigma_distortion_rises_with_a_blur_and_is_lowest_for_the_image_itself():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8)
    blurred = torch.nn.functional.avg_pool2d(x.float(), 3, 1, 1).round().to(torch.uint8)
    exact = sweep.fixed_sigma_distortion(x, x, 0.1)
    blur = sweep.fixed_sigma_distortion(x, blurred, 0.1)
    assert (blur > exact).all()
    # For x̂ = x every pixel is the centre of its bin: -log of the bin's mass, 3072 times (edges take the tails).
    interior = -math.log(math.erf((1 / 255) / (0.1 * math.sqrt(2))))
    assert float(exact.max()) <= 3072 * interior + 1e-6


def test_a_traversal_of_a_dimension_the_decoder_ignores_changes_nothing():
    model = VAE(ModelConfig(latent_dim=4, widths=(8, 8, 8), res_blocks=0, likelihood="gaussian")).eval()
    with torch.no_grad():
        model.decoder.fc.weight[:, 3] = 0.0  # z_3 reaches nothing
    mu = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    assert torch.all(sweep.traversal_change(model, mu, [3], 2.5) == 0)
    assert torch.all(sweep.traversal_change(model, mu, [0], 2.5) > 0)
    kl = torch.tensor([0.0, 0.0, 0.0, 5.0])  # the ignored dimension has the most KL: its traversal is invisible
    v = sweep.traversal_visibility(model, mu, kl, 1, 2.5, reps=10, seed=0)
    assert v["traversal_change"] == 0


def test_sweep_params_are_checked_by_name():
    with pytest.raises(ParamsError, match="'sweep.betas'"):
        from_dict(Params, {"sweep": {"betas": [1, 1]}})
    with pytest.raises(ParamsError, match="'sweep.epochs'"):
        from_dict(Params, {"sweep": {"epochs": 0}})


def _point(beta, rate, width=1.0, **extra):
    p = {"beta": beta, "rate_nats": rate, "rate_nats_lo": rate - width, "rate_nats_hi": rate + width,
         "active_units_0p01": 128 if rate > 50 else 10, "beta_2sigma2": beta * 2 * 0.01,
         "distortion_fixed_sigma_nats": 1000 + 1000 / rate, "recon_fcd": 10 + 100 / rate}
    for k in ("distortion_fixed_sigma_nats", "recon_fcd"):
        p[f"{k}_lo"], p[f"{k}_hi"] = p[k] - 1, p[k] + 1
    return p | extra


def test_the_analysis_names_directions_only_where_intervals_separate_and_stays_under_300_words():
    points = [_point(0.5, 300), _point(5, 290), _point(500, 20)]
    text = claims.beta_analysis([], {"points": points}, None)
    assert len(text.split()) <= 300
    assert "(lower)" in text and "near the sweep's β = 5" in text and "97%" in text
    # Overlapping rates: no direction.
    flat = [_point(0.5, 300, 30), _point(500, 290, 30)]
    text = claims.beta_analysis([], {"points": flat}, None)
    assert "(no measurable difference)" in text


def test_the_seed_spread_params_are_checked_by_name():
    with pytest.raises(ParamsError, match="'sweep.spread_betas'"):
        from_dict(Params, {"sweep": {"betas": [1, 4], "spread_betas": [1, 8]}})
    with pytest.raises(ParamsError, match="'sweep.spread_seeds'"):
        from_dict(Params, {"sweep": {"spread_seeds": [1, 1]}})


def test_seed_sd_is_the_largest_per_beta_standard_deviation():
    rows = [{"beta": 1, "seed": 0, "rate": 1.0, "flag": True}, {"beta": 1, "seed": 1, "rate": 2.0, "flag": False},
            {"beta": 1, "seed": 2, "rate": 3.0, "flag": True},
            {"beta": 8, "seed": 0, "rate": 10.0}, {"beta": 8, "seed": 1, "rate": 14.0},
            {"beta": 64, "seed": 0, "rate": 1000.0}]  # one seed: no spread to measure
    sd = seed_sd(rows)
    assert sd == {"rate": pytest.approx(math.sqrt(8.0))}  # beta 8: |10 - 14| / sqrt(2); beta 1: 1


def test_the_sweep_recipes_seed_spread_can_withhold_a_direction():
    points = [_point(0.5, 300), _point(5, 290), _point(500, 280)]  # intervals of +-1 nat separate
    assert "(lower)" in claims.beta_analysis([], {"points": points}, None)
    noisy = {"points": points, "seed_spread": {"sd": {"rate_nats": 15.0}}}  # 2 sd = 30 > the 20-nat change
    assert "(no measurable difference)" in claims.beta_analysis([], noisy, None)


def test_a_sweep_stage_names_a_seed_or_beta_outside_the_spread_lists(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text("seed: 2\nsweep:\n  betas: [1, 4, 64]\n  spread_betas: [64]\n"
                                          "  spread_seeds: [1, 2]\n")
    monkeypatch.chdir(tmp_path)
    params, beta, paths = runtime.sweep_stage("sweep", ["--beta", "64", "--seed", "1"], "")
    assert (beta, paths) == (64.0, SweepPaths("64", 1)) and paths.stage == "sweep_seed@64-1"
    assert runtime.sweep_stage("sweep", ["--beta", "4"], "")[2] == SweepPaths("4")
    for argv, named in ((["--beta", "4", "--seed", "1"], "sweep.spread_betas"),
                        (["--beta", "64", "--seed", "3"], "sweep.spread_seeds"),
                        (["--beta", "64", "--seed", "2"], "the top-level seed 2"),
                        (["--beta", "5"], "sweep.betas")):
        with pytest.raises(SystemExit) as e:
            runtime.sweep_stage("sweep", argv, "")
        assert e.value.code == 2 and named in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing half-written


def test_the_report_shows_the_sweep_recipes_seed_spread():
    runs = [{"beta": 1.0, "seed": s, "rate_nats": r, "active_units_0p01": 128} for s, r in ((0, 240), (1, 244))]
    sweep_json = {"points": [_point(0.5, 300), _point(500, 20)],
                  "recipe": {"subset": 1000, "epochs": 1, "batch_size": 8, "lr": 0.1},
                  "seed_spread": {"betas": [1.0], "seeds": [0, 1], "runs": runs, "sd": seed_sd(runs)}}
    text = "\n".join(report.sweep_section(sweep_json, "sweep"))
    assert "| 1, seed 1 | 244.0 |" in text and "| seed SD (largest over β) | 2.8 | 0.0 |" in text
    del sweep_json["seed_spread"]
    assert "seed SD" not in "\n".join(report.sweep_section(sweep_json, "sweep"))


def test_the_sweep_figures_draw_each_other_seed_where_its_numbers_put_it():
    """The seed spread is seen, not only tabled: each run of a spread β with another seed is a hollow point at its
    own rate and distortion, and at its own value in every metric panel."""
    from vaelab import comparison_plots

    keys = [k for k, _ in comparison_plots.SWEEP_PANELS] + ["distortion_nats"]
    points = [{"beta": b, **{k: 10.0 * i + j for j, k in enumerate(keys)}} for i, b in enumerate((1.0, 4.0))]
    seeds = [{"beta": 4.0, "seed": 1, **{k: 100.0 + j for j, k in enumerate(keys)}}]

    def hollow(ax) -> list[tuple[float, float]]:
        return [(float(x), float(y)) for line in ax.lines if line.get_markerfacecolor() == "none"
                for x, y in zip(line.get_xdata(), line.get_ydata())]

    fig = comparison_plots.sweep_rate_distortion(points, [], seeds)
    assert hollow(fig.axes[0]) == [(seeds[0]["rate_nats"], seeds[0]["distortion_nats"])]
    fig = comparison_plots.sweep_metrics(points, [], seeds)
    for ax, (key, _) in zip(fig.axes, comparison_plots.SWEEP_PANELS):
        assert hollow(ax) == [(4.0, seeds[0][key])], key
    assert all(hollow(ax) == [] for ax in comparison_plots.sweep_metrics(points, []).axes)
    comparison_plots.plt.close("all")
