"""Purchase-propensity rows and the DCN-v2 model: no leakage, right labels, calibrated output."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
import torch

from models.propensity import DCNConfig, DCNv2
from pipeline.families.purchase_propensity.features import PROPENSITY_DENSE, PROPENSITY_IDS, Vocab, propensity_rows

T0 = datetime(2026, 11, 2, tzinfo=timezone.utc)


def _events(rows):
    return pl.DataFrame(
        [(T0 + timedelta(hours=h), u, f"s-{u}-{int(h // 6)}", i, t, p, 1) for h, u, i, t, p in rows],
        schema={
            "event_time": pl.Datetime("us", "UTC"),
            "user_id": pl.String,
            "session_id": pl.String,
            "item_id": pl.String,
            "event_type": pl.String,
            "price": pl.Float64,
            "quantity": pl.Int32,
        },
        orient="row",
    )


CATALOG = pl.DataFrame(
    {"item_id": ["a", "b", "c"], "category": ["x", "x", "y"], "brand": ["p", "q", "p"], "price": [10.0, 20.0, 5.0]}
)


@pytest.mark.fast
def test_rows_use_only_the_past_and_label_the_horizon():
    events = _events(
        [
            (-30, "u1", "a", "view", 10.0),
            (-29, "u1", "a", "add_to_cart", 10.0),
            (-5, "u1", "b", "view", 20.0),
            (-100, "u1", "c", "purchase", 5.0),  # before the lookback: history, not a candidate
            (3, "u1", "a", "purchase", 10.0),  # bought inside the horizon: label 1
            (3, "u1", "b", "view", 20.0),  # activity after the cutoff never reaches a feature
            (3, "u1", "b", "add_to_cart", 20.0),
            (60, "u1", "b", "purchase", 20.0),  # after the horizon: label 0
            (-2, "u2", "c", "view", 5.0),
            (-90, "u3", "a", "purchase", 0.0),  # a free item, before the lookback: no average price
            (-1, "u3", "b", "view", 20.0),
        ]
    )
    rows = propensity_rows(events, CATALOG, T0, horizon=timedelta(days=2), lookback=timedelta(days=3))
    got = {(r["user_id"], r["item_id"]): r for r in rows.iter_rows(named=True)}
    # u1's old purchase of c is history only
    assert set(got) == {("u1", "a"), ("u1", "b"), ("u2", "c"), ("u3", "b")}
    assert got[("u3", "b")]["price_vs_user_avg"] == 1.0
    assert got[("u1", "a")]["label"] == 1.0 and got[("u1", "b")]["label"] == 0.0
    assert got[("u1", "b")]["ui_views"] == 1.0 and got[("u1", "b")]["ui_carts"] == 0.0
    assert got[("u1", "a")]["ui_carts"] == 1.0
    assert got[("u1", "b")]["ui_hours_since_last"] == pytest.approx(5.0)
    assert got[("u1", "a")]["u_purchases"] == 1.0  # the purchase of c, long before
    assert got[("u1", "a")]["u_category_affinity"] == pytest.approx(3 / 4)  # 3 of u1's 4 past events are in x
    assert got[("u1", "b")]["price"] == 20.0 and got[("u1", "b")]["price_vs_user_avg"] == pytest.approx(4.0)
    # Time-decayed counts: an event a day old weighs 1/2 with a 1-day half-life, 2 ** (-1/7) with 7 days.
    assert got[("u1", "b")]["ui_events_1d"] == pytest.approx(0.5 ** (5 / 24))
    assert got[("u1", "a")]["ui_events_7d"] == pytest.approx(0.5 ** (30 / 168) + 0.5 ** (29 / 168))
    assert got[("u1", "a")]["ui_purchases_7d"] == 0.0
    assert got[("u1", "a")]["u_events_1d"] == pytest.approx(sum(0.5 ** (h / 24) for h in (30, 29, 5, 100)))
    assert got[("u2", "c")]["i_views_1d"] == pytest.approx(0.5 ** (2 / 24))
    assert got[("u1", "a")]["i_purchases_7d"] == pytest.approx(0.5 ** (90 / 168))  # u3's purchase
    # Sequence position: b is u1's last item, a the one before.
    assert got[("u1", "b")]["ui_recency_rank"] == 0.0 and got[("u1", "a")]["ui_recency_rank"] == 1.0
    dense = rows.select(PROPENSITY_DENSE)
    assert dense.null_count().sum_horizontal().item() == 0
    assert dense.select(pl.all().is_finite().all()).row(0) == (True,) * len(PROPENSITY_DENSE)


@pytest.mark.fast
def test_unknown_ids_map_to_zero_and_the_model_scores_them():
    vocab = Vocab.of(pl.Series(["a", "b"]))
    encoded = pl.DataFrame({"item_id": ["a", "zzz", None]}).select(vocab.encode_expr("item_id"))["item_id"]
    assert encoded.to_list() == [1, 0, 0]
    model = DCNv2(DCNConfig(n_dense=len(PROPENSITY_DENSE), id_cardinalities=(3, 2, 2)))
    ids = torch.zeros(4, len(PROPENSITY_IDS), dtype=torch.long)
    probs = model.predict_proba(ids, torch.rand(4, len(PROPENSITY_DENSE)))
    assert probs.shape == (4,) and ((probs > 0) & (probs < 1)).all()


@pytest.mark.fast
def test_a_feature_constant_in_training_does_not_move_the_output_when_it_changes_later():
    """A dense input the scaler saw constant (std 0) taught the network nothing: a later value of
    it (the first chargeback count of 1 after a training set without one) leaves the logit as it
    was, where dividing by the std's floor would have made it a million standard deviations."""
    torch.manual_seed(0)
    model = DCNv2(DCNConfig(n_dense=3, id_cardinalities=(), hidden=(8,))).eval()
    train = torch.randn(200, 3).abs()
    train[:, 2] = 0.0
    model.fit_scaler(train)
    ids = torch.zeros(5, 0, dtype=torch.long)
    later = train[:5].clone()
    later[:, 2] = 1.0
    with torch.no_grad():
        torch.testing.assert_close(model(ids, later), model(ids, train[:5]))
        later[:, 2] = float("inf")  # selected away, not multiplied by 0 (inf * 0 is NaN)
        torch.testing.assert_close(model(ids, later), model(ids, train[:5]))
        later[:, 2] = 1.0
        moved = train[:5].clone()
        moved[:, 0] += 1.0  # a feature it did learn from still counts
        assert not torch.allclose(model(ids, moved), model(ids, train[:5]))
    assert model.dense_learnt.tolist() == [1.0, 1.0, 0.0]
    # A checkpoint from before the mask loads with every input entering as it did then.
    state = {k: v for k, v in model.state_dict().items() if k != "dense_learnt"}
    old = DCNv2(DCNConfig(n_dense=3, id_cardinalities=(), hidden=(8,))).eval()
    old.load_state_dict(state)
    assert old.dense_learnt.tolist() == [1.0, 1.0, 1.0]
    with torch.no_grad():
        torch.testing.assert_close(old(ids, train[:5]), model(ids, train[:5]))  # the column was 0 - 0
        assert not torch.allclose(old(ids, later), model(ids, later))


@pytest.mark.fast
def test_platt_calibration_lowers_log_loss_of_a_miscalibrated_model():
    torch.manual_seed(0)
    n = 4000
    dense = torch.rand(n, len(PROPENSITY_DENSE))
    labels = (torch.rand(n) < 0.05 + 0.3 * dense[:, 0]).float()
    model = DCNv2(DCNConfig(n_dense=len(PROPENSITY_DENSE), id_cardinalities=(2, 2, 2)))
    model.fit_scaler(dense)
    with torch.no_grad():
        model.head.bias.fill_(3.0)  # predicts far too many purchases
    ids = torch.zeros(n, len(PROPENSITY_IDS), dtype=torch.long)
    bce = torch.nn.functional.binary_cross_entropy
    with torch.no_grad():
        before = bce(model.predict_proba(ids, dense), labels).item()
        model.calibrate(ids, dense, labels)
        after = bce(model.predict_proba(ids, dense), labels).item()
    assert after < before
    with torch.no_grad():
        assert abs(model.predict_proba(ids, dense).mean().item() - labels.mean().item()) < 0.02


def _structured_rows(n: int, seed: int) -> pl.DataFrame:
    """Rows whose label has a known structure: a linear effect of the dense features, plus what a
    linear model of those features cannot see: a per-item taste (an id effect) and an interaction
    (cheaper-than-usual items sell in one category, dearer ones in the other)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    items = rng.integers(0, 200, n)
    item_taste = np.random.default_rng(99).normal(0, 1.5, 200)  # the same shop for every split
    category = items % 2
    dense = {c: rng.exponential(1.0, n) for c in PROPENSITY_DENSE}
    dense["price_vs_user_avg"] = rng.uniform(0.2, 2.0, n)
    interaction = np.where(category == 0, 1.0, -1.0) * (dense["price_vs_user_avg"] - 1.1) * 3
    logit = (
        0.8 * np.log1p(dense["ui_purchases"])
        + 0.5 * np.log1p(dense["ui_carts"])
        + item_taste[items]
        + interaction
        - 1.5
    )
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return pl.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "item_id": [f"i{i}" for i in items],
            "category": [f"c{c}" for c in category],
            "brand": ["b"] * n,
            **dense,
            "label": label,
        }
    )


def test_dcn_beats_logistic_regression_on_data_with_known_structure():
    from pipeline.core.params import TrainPropensityParams
    from pipeline.data.dataset import TimeSplit
    from pipeline.families.purchase_propensity.features import PropensityFeatures
    from pipeline.families.purchase_propensity.train import fit_propensity

    train, valid, test = (_structured_rows(n, seed) for n, seed in ((20_000, 1), (5_000, 2), (5_000, 3)))
    vocabs = {
        "item_idx": Vocab.of(train["item_id"]),
        "category_idx": Vocab.of(train["category"]),
        "brand_idx": Vocab.of(train["brand"]),
    }
    split = TimeSplit(T0, T0 + timedelta(days=5), T0 + timedelta(days=6), T0 + timedelta(days=7))
    features = PropensityFeatures(split, train, valid, test, vocabs, {"cutoffs": 1})
    fit = fit_propensity(
        features, TrainPropensityParams(epochs=8, batch_size=256, lr=0.003, patience=3, id_embeddings=True)
    )  # ids carry signal here
    m = fit.metrics
    print(
        f"DCN-v2 AUC {m['test_auc']:.3f}, log loss {m['test_log_loss']:.3f}; logistic regression AUC "
        f"{m['baseline_logreg_auc']:.3f}, log loss {m['baseline_logreg_log_loss']:.3f}; LightGBM AUC "
        f"{m['baseline_lightgbm_auc']:.3f}, log loss {m['baseline_lightgbm_log_loss']:.3f}"
    )
    # The comparison, not the values: DCN-v2 learns the item tastes and the interaction; the
    # logistic regression, on the same dense features, cannot.
    assert m["test_auc"] > m["baseline_logreg_auc"] + 0.02, m
    assert m["test_log_loss"] < m["baseline_logreg_log_loss"], m
    # LightGBM (ids as categorical) learns them too: a floor that is not a straw man.
    assert m["baseline_lightgbm_auc"] > m["baseline_logreg_auc"] + 0.02, m


def _ten_days():
    """Ten days: u1 views a daily and buys it on even days, u2 views b and never buys, u3 views c
    daily and buys it on odd days (so every cutoff has both labels)."""
    rows = []
    for d in range(10):
        rows += [
            (24 * d + 1, "u1", "a", "view", 10.0),
            (24 * d + 2, "u2", "b", "view", 20.0),
            (24 * d + 1.5, "u3", "c", "view", 5.0),
        ]
        buyer = ("u1", "a", "purchase", 10.0) if d % 2 == 0 else ("u3", "c", "purchase", 5.0)
        rows.append((24 * d + 3, *buyer))
    return _events(rows)


@pytest.mark.fast
def test_training_rows_see_the_catalog_as_it_was_at_their_cutoff():
    from pipeline.core.params import TrainPropensityParams
    from pipeline.data.dataset import catalog_as_of
    from pipeline.families.purchase_propensity.features import propensity_features

    known = lambda days: T0 + timedelta(days=days)  # noqa: E731
    history = pl.DataFrame(
        {
            "item_id": ["a", "b", "c", "a"],
            "category": ["x", "x", "y", "z"],
            "brand": ["p", "q", "p", "p"],
            "price": [10.0, 20.0, 5.0, 99.0],
            "known_from": [known(0), known(0), known(0), known(7)],
        },
        schema_overrides={"known_from": pl.Datetime("us", "UTC")},
    )
    params = TrainPropensityParams(valid_days=2, test_days=2, horizon_days=1, lookback_days=2, cutoff_stride_days=1)
    f = propensity_features(_ten_days(), history, params)
    assert f.split.train_end == known(6) and f.counts["cutoffs"] == 4  # days 2..5: each label inside training
    assert f.train_rows["cutoff"].max() + timedelta(days=1) <= f.split.train_end
    a = lambda rows: rows.filter(pl.col("item_id") == "a")["price"].unique().to_list()  # noqa: E731
    # Re-priced on day 7 (after train_end): no training or validation row sees it; the test row does.
    assert a(f.train_rows) == [10.0] and a(f.valid_rows) == [10.0] and a(f.test_rows) == [99.0]
    assert f.vocabs["category_idx"].values == ("x", "y")  # "z" appears after the training period
    # Without the history, every period would see today's price: what point in time prevents.
    latest = propensity_features(_ten_days(), catalog_as_of(history), params)
    assert a(latest.train_rows) == [99.0]


@pytest.mark.fast
def test_a_label_horizon_longer_than_a_period_is_refused():
    from pipeline.core.params import TrainPropensityParams

    with pytest.raises(ValueError, match=r"horizon_days \(3\) is longer than valid_days \(2\)"):
        TrainPropensityParams(valid_days=2, test_days=4, horizon_days=3)
    with pytest.raises(ValueError, match=r"horizon_days \(3\) is longer than test_days \(2\)"):
        TrainPropensityParams(valid_days=4, test_days=2, horizon_days=3)
