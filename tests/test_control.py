"""The control dataset with known factors, and the disentanglement scores checked on known answers."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from vaelab import control, disentanglement
from vaelab.model import VAE
from vaelab.params import ControlConfig, Params, ParamsError, TrainConfig, from_dict
from vaelab.stages.control_eval import summarise, verdict
from vaelab.train import train


@pytest.fixture(scope="module")
def rendered():
    return control.render()


def test_the_full_factorial_is_rendered_once_each_and_deterministically(rendered):
    images, factors = rendered
    sizes = control.Factors().sizes
    assert images.shape == (int(np.prod(sizes)), 3, 32, 32) and images.dtype == np.uint8
    assert sorted(map(tuple, factors.tolist())) == list(itertools.product(*(range(n) for n in sizes)))
    # Every combination of factors gives its own image: the factors can be read back from the pixels.
    assert len({img.tobytes() for img in images}) == len(images)
    again, _ = control.render()
    assert np.array_equal(again, images)


def test_each_factor_moves_the_object_as_named(rendered):
    images, factors = rendered
    f = control.Factors()

    def image(**levels):
        base = dict(zip(f.names, (0, 0, 0, len(f.scales) - 1, 2, 2)))
        want = np.array([{**base, **levels}[n] for n in f.names])
        return images[np.flatnonzero((factors == want).all(1))[0]].astype(np.float64)

    def centroid(img):
        mass = img.sum(0)
        ys, xs = np.indices(mass.shape)
        return (mass * ys).sum() / mass.sum(), (mass * xs).sum() / mass.sum()

    # x and y shift the object by the pixels they name; the object stays whole (same mass).
    (y0, x0), (y1, x1) = centroid(image(x=0)), centroid(image(x=5))
    assert x1 - x0 == pytest.approx(f.x_px[5] - f.x_px[0], abs=0.01) and y1 == pytest.approx(y0, abs=0.01)
    (y0, _), (y1, _) = centroid(image(y=0)), centroid(image(y=5))
    assert y0 - y1 == pytest.approx(f.y_px[5] - f.y_px[0], abs=0.01)  # y up, rows down
    # Scale grows the area as its square; hue changes the colour, not the silhouette.
    small, big = image(scale=0).sum(), image(scale=len(f.scales) - 1).sum()
    assert big / small == pytest.approx((f.scales[-1] / f.scales[0]) ** 2, rel=0.1)
    red, cyan = image(hue=0), image(hue=f.hues_deg.index(180))
    assert red[0].sum() > 0 and red[1:].sum() == 0 and cyan[0].sum() == 0
    assert np.array_equal(red[0] > 0, cyan[1] > 0)
    # No shape looks the same at two orientations (none has a rotational symmetry).
    for shape in range(len(f.shapes)):
        views = {image(shape=shape, orientation=o)[:, :, :].tobytes() for o in range(len(f.orientations_deg))}
        assert len(views) == len(f.orientations_deg)


def test_bad_factor_values_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown.*circle"):
        control.Factors(shapes=("arrow", "circle")).check()
    with pytest.raises(ValueError, match="inside the 32x32 image"):
        control.Factors(x_px=(-9, 9)).check()
    with pytest.raises(ValueError, match="orientation needs at least 2"):
        control.Factors(orientations_deg=(0,)).check()
    with pytest.raises(ParamsError, match="'control.fixed_sigma'"):
        from_dict(Params, {"control": {"fixed_sigma": 0}})
    with pytest.raises(ParamsError, match="'control.seeds'"):
        from_dict(Params, {"control": {"seeds": [0, 0]}})


def test_the_split_is_seeded_disjoint_and_subsets_in_proportion():
    train_idx, test_idx = control.split(1000, 0.1, seed=3)
    assert len(test_idx) == 100 and len(set(train_idx) | set(test_idx)) == 1000
    assert np.array_equal(control.split(1000, 0.1, seed=3)[0], train_idx)
    small_train, small_test = control.split(1000, 0.1, seed=3, subset=90)
    assert len(small_train) == 90 and len(small_test) == 10 and not set(small_train) & set(small_test)
    with pytest.raises(ValueError, match="exceeds"):
        control.split(1000, 0.1, seed=3, subset=901)


# Known answers: codes built from the true factors of a draw of the factorial.
@pytest.fixture(scope="module")
def known():
    sizes = control.Factors().sizes
    all_factors = np.array(list(itertools.product(*(range(n) for n in sizes))))
    rng = np.random.default_rng(0)
    factors = all_factors[rng.choice(len(all_factors), 900, replace=False)]
    codes = factors + rng.normal(0, 0.05, factors.shape)
    return factors, codes, rng


def _scores(codes, factors):
    # Fewer trees and images than the stage uses (100 trees, 2,000 + 1,000 images): the answers are as clear.
    return disentanglement.scores(codes, factors, bins=20, n_train=600, n_test=300, trees=25)


def test_codes_equal_to_the_factors_score_near_one(known):
    factors, codes, _ = known
    s = _scores(codes, factors)
    assert s["mig"] >= 0.9
    assert s["dci_disentanglement"] >= 0.9 and s["dci_completeness"] >= 0.9 and s["dci_informativeness"] >= 0.9


def test_a_rotation_of_those_codes_keeps_the_information_but_loses_the_axes(known):
    factors, codes, rng = known
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    rotated = ((codes - codes.mean(0)) / codes.std(0)) @ q
    s = _scores(rotated, factors)
    assert s["mig"] < 0.15
    assert s["dci_disentanglement"] < 0.5
    assert s["dci_informativeness"] >= 0.6  # chance is about 0.19 (the mean of 1/levels)


def test_a_duplicated_latent_halves_completeness_and_empties_the_gap(known):
    factors, codes, rng = known
    twice = np.concatenate([codes, codes + rng.normal(0, 0.01, codes.shape)], 1)
    s = _scores(twice, factors)
    # Each factor's importance split evenly over 2 of 12 codes: completeness 1 - ln 2 / ln 12 = 0.72.
    assert 0.62 <= s["dci_completeness"] <= 0.80
    assert s["mig"] <= 0.1
    assert s["dci_disentanglement"] >= 0.9


def test_shuffled_labels_score_about_zero(known):
    factors, codes, rng = known
    s = _scores(codes, factors[rng.permutation(len(factors))])
    assert s["mig"] < 0.05 and s["dci_disentanglement"] < 0.1 and s["dci_completeness"] < 0.1
    assert s["dci_informativeness"] < 0.3


def test_the_seed_interval_is_students_t_and_the_verdict_needs_every_seed():
    mean, lo, hi = disentanglement.seed_interval([0.2, 0.3, 0.4])
    assert mean == pytest.approx(0.3) and hi - mean == pytest.approx(4.303 * 0.1 / 3**0.5, rel=1e-3)
    keys = ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "rate_nats", "active_units")

    def point(beta, seed, mig, d):
        return {"beta": beta, "seed": seed, **{k: 0.5 for k in keys}, "mig": mig, "dci_disentanglement": d}

    points = [point(1.0, s, m, 0.2 + 0.01 * s) for s, m in enumerate((0.05, 0.1, 0.08))]
    points += [point(8.0, s, m, 0.5 + 0.01 * s) for s, m in enumerate((0.3, 0.35, 0.09))]
    v = verdict(points, summarise(points))
    assert v["best_beta"] == 8.0 and v["best_seeds_all_above_beta_1"] is False  # seed 2 (0.09) < 0.1
    assert v["best_dci_d_separated_above_beta_1"] is True
    points[-1]["mig"] = 0.31
    assert verdict(points, summarise(points))["best_seeds_all_above_beta_1"] is True


def test_a_fixed_sigma_decoder_keeps_its_sigma_while_the_rest_trains():
    cfg = ControlConfig(latent_dim=4, widths=(8, 8, 8), fixed_sigma=0.3)
    model = VAE(cfg.model_config())
    assert float(model.log_sigma.exp()) == pytest.approx(0.3) and not model.log_sigma.requires_grad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, _ = control.render(control.Factors(shapes=("arrow", "ell"), hues_deg=(0, 120), orientations_deg=(0, 90),
                                                scales=(0.7, 1.0), x_px=(-2, 2), y_px=(-2, 2)))
    x = torch.from_numpy(images)
    train(model, x, x[:8], 4.0, TrainConfig(epochs=1, batch_size=16, bf16=False, warmup_steps=1), 0,
          torch.device("cpu"), progress=False)
    after = model.state_dict()
    assert torch.equal(after["log_sigma"], before["log_sigma"])
    assert not torch.equal(after["encoder.head.0.weight"], before["encoder.head.0.weight"])
    assert not torch.equal(after["decoder.out.weight"], before["decoder.out.weight"])
    assert not torch.equal(after["decoder.fc.2.weight"], before["decoder.fc.2.weight"])  # the dense hidden layer
