"""A synthetic shop: realistic raw event and catalog files for the embedded default.

The simulation has structure that models can learn and tests can check:

* users hold a latent preference over categories (a sparse Dirichlet draw) and a price sensitivity;
* items have power-law popularity, a price drawn per category, and a position inside their category,
  so that neighbouring items are similar and browsing drifts between neighbours (sequential signal);
* each session walks a view -> add_to_cart -> (remove_from_cart) -> purchase funnel;
* users come back to buy what they bought before (repeat purchases);
* traffic follows a daily curve and a weekly cycle; new users and items arrive every day, and new
  items enjoy a launch boost that fades over a week;
* prices move (``price_dynamics``): each item has a known price elasticity (its category's plus a
  little of its own) and a demand trend; the shop reprices now and then, following the trend (what
  sells better gets dearer), and runs promotions of 15-30% off for a few days, more often on
  declining items and from Fridays. Demand answers the selling price exactly as the elasticity
  says (the chance that a view becomes a cart scales by (price / base price) ** elasticity), so the
  truth is known: ``truth/elasticity.csv`` beside the landing files. The confounding is deliberate:
  a regression of demand on price without the trend and the calendar is biased.

* the risk side (``pipeline.data.generate_risk``): every event's device, address and country,
  purchases' payment fingerprints, sign-ups of new users, and fraudulent orders of four scenarios
  at ``fraud_rate``, each charged back days to weeks later (``truth/fraud.csv``); with
  ``first_party_rate``, customers' own orders disputed as well.

The whole simulation is vectorised across sessions (all sessions of a day advance one step at a
time), so ten million events take seconds, not hours. Given the same parameters and seed, the output
is byte-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.errors import BadInput
from pipeline.core.params import GenerateParams
from pipeline.core.schema import CATALOG_COLUMNS, EVENT_COLUMNS
from pipeline.data import generate_risk

CATEGORY_NAMES = (
    "electronics.smartphone",
    "electronics.audio",
    "electronics.camera",
    "computers.laptop",
    "computers.peripherals",
    "appliances.kitchen",
    "appliances.cleaning",
    "home.furniture",
    "home.decor",
    "home.textiles",
    "garden.tools",
    "sport.fitness",
    "sport.outdoor",
    "kids.toys",
    "kids.clothing",
    "apparel.women",
    "apparel.men",
    "apparel.shoes",
    "beauty.skincare",
    "beauty.makeup",
    "health.supplements",
    "grocery.snacks",
    "grocery.drinks",
    "books.fiction",
    "books.nonfiction",
    "pets.food",
    "pets.accessories",
    "auto.accessories",
    "stationery.office",
    "jewelry.watches",
)

# Relative traffic by hour of day (UTC) and by weekday (Monday first).
HOURLY_TRAFFIC = np.array(
    [
        0.25,
        0.15,
        0.1,
        0.08,
        0.08,
        0.12,
        0.3,
        0.55,
        0.8,
        0.9,
        0.95,
        1.0,
        1.05,
        1.0,
        0.95,
        0.95,
        1.0,
        1.1,
        1.3,
        1.5,
        1.6,
        1.4,
        0.95,
        0.5,
    ]
)
WEEKDAY_TRAFFIC = np.array([1.0, 0.95, 0.95, 1.0, 1.08, 1.22, 1.15])

MEAN_SESSION_VIEWS = 5.0
MAX_SESSION_VIEWS = 60
P_NEIGHBOUR = 0.55  # next view is a neighbour of the previous item
P_SWITCH_CATEGORY = 0.12  # next view starts afresh in a (re)drawn category
P_CART = 0.09  # base chance that a view leads to add_to_cart
P_REMOVE = 0.12  # chance that a cart add is undone
P_CHECKOUT = 0.55  # chance that a session with a cart ends in a purchase
SHIFT_BOOST = 40.0  # popularity multiplier of the items a "new_items" shift launches
SHIFT_PRICE = 1.5  # price multiplier of a "prices" shift
SHIFTS = ("none", "new_items", "prices")
LAUNCH_BOOST = 3.0  # popularity multiplier of a new item on its launch day, fading
LAUNCH_DECAY_DAYS = 7.0
ELASTICITY_RANGE = (-2.6, -0.8)  # category elasticities are drawn from this range
ITEM_ELASTICITY_SD = 0.12  # an item's own deviation from its category's elasticity
TREND_SD = 0.006  # per-day log-popularity trend of an item
P_REPRICE = 1 / 21  # chance per item and day that the list price is set anew
REPRICE_TREND = 0.6  # the new list price follows this share of the item's demand trend (log)
REPRICE_SD = 0.07
PRICE_BOUNDS = (0.75, 1.3)  # list price as a multiple of the item's base price
P_PROMO = 0.012  # chance per item and day that a promotion starts (x2 for a declining item, x3 on Fridays)
PROMO_DAYS = (3, 8)
PROMO_DISCOUNT = (0.15, 0.3)
TRUTH_FILE = "truth/elasticity.csv"


@dataclass(frozen=True)
class GeneratedDay:
    """What the generator wrote for one day."""

    day: str
    events_path: Path
    catalog_path: Path
    events: int
    catalog_items: int


@dataclass
class _World:
    """Every user and item that will exist during the simulation, with their latent traits."""

    item_category: np.ndarray
    item_position: np.ndarray
    item_popularity: np.ndarray
    item_price: np.ndarray
    item_brand: np.ndarray
    item_created: np.ndarray
    user_pref_cum: np.ndarray
    user_sensitivity: np.ndarray
    user_activity: np.ndarray
    user_created: np.ndarray
    category_median_price: np.ndarray
    n_categories: int
    # Selling price of every item on every day as a multiple of its base price (days x items), and
    # the list price's multiple (without promotions); the known elasticity and trend of each item.
    sell_multiple: np.ndarray | None = None
    list_multiple: np.ndarray | None = None
    item_elasticity: np.ndarray | None = None
    item_trend: np.ndarray | None = None


def _build_world(p: GenerateParams, rng: np.random.Generator) -> _World:
    if p.categories > len(CATEGORY_NAMES):
        raise BadInput(f"generate.categories must be at most {len(CATEGORY_NAMES)}, got {p.categories}")
    n_cat = p.categories
    growth_items = math.ceil(p.initial_items * p.new_items_per_day)
    growth_users = math.ceil(p.initial_users * p.new_users_per_day)
    n_shifted = p.initial_items // 2 if p.shift == "new_items" else 0
    n_items = p.initial_items + growth_items * p.days + n_shifted
    n_users = p.initial_users + growth_users * p.days

    # Category sizes follow a mild power law, item popularity a heavy one (Pareto, alpha ~1.2).
    cat_weight = 1.0 / np.arange(1, n_cat + 1) ** 0.6
    item_category = rng.choice(n_cat, size=n_items, p=cat_weight / cat_weight.sum())
    item_popularity = rng.pareto(1.2, size=n_items) + 1.0
    category_median_price = np.exp(rng.uniform(np.log(5), np.log(400), size=n_cat))
    item_price = np.round(category_median_price[item_category] * rng.lognormal(0.0, 0.5, n_items), 2)
    item_price = np.maximum(item_price, 0.5)
    item_brand = rng.integers(0, p.brands, size=n_items)
    item_created = np.zeros(n_items, dtype=np.int64)
    for d in range(p.days):
        start = p.initial_items + growth_items * d
        item_created[start : start + growth_items] = d

    # Sparse preferences: most users care about two or three categories.
    prefs = rng.dirichlet(np.full(n_cat, 0.15), size=n_users).astype(np.float32)
    if n_shifted:  # the launched items: created on the shift day, far more popular than the others
        item_created[-n_shifted:] = p.shift_day
        item_popularity[-n_shifted:] *= SHIFT_BOOST
    user_pref_cum = np.cumsum(prefs, axis=1)
    user_pref_cum[:, -1] = 1.0
    user_sensitivity = rng.lognormal(0.0, 0.5, size=n_users)
    user_activity = rng.pareto(1.5, size=n_users) + 1.0
    user_created = np.zeros(n_users, dtype=np.int64)
    for d in range(p.days):
        start = p.initial_users + growth_users * d
        user_created[start : start + growth_users] = d
    world = _World(
        item_category=item_category,
        item_position=rng.random(n_items),
        item_popularity=item_popularity,
        item_price=item_price,
        item_brand=item_brand,
        item_created=item_created,
        user_pref_cum=user_pref_cum,
        user_sensitivity=user_sensitivity,
        user_activity=user_activity,
        user_created=user_created,
        category_median_price=category_median_price,
        n_categories=n_cat,
    )
    if p.price_dynamics:
        _price_paths(world, p, np.random.default_rng([p.seed, 7]))  # its own stream: the rest is unchanged
    return world


def _price_paths(world: _World, p: GenerateParams, rng: np.random.Generator) -> None:
    """Every item's elasticity, trend, and list and selling price multiples for every day."""
    n_items = world.item_category.size
    category_elasticity = rng.uniform(*ELASTICITY_RANGE, size=world.n_categories)
    elasticity = category_elasticity[world.item_category] + rng.normal(0.0, ITEM_ELASTICITY_SD, n_items)
    world.item_elasticity = np.clip(elasticity, -3.2, -0.3)
    world.item_trend = rng.normal(0.0, TREND_SD, n_items)
    list_multiple = np.ones((p.days, n_items))
    sell = np.ones((p.days, n_items))
    current = np.ones(n_items)
    promo_left = np.zeros(n_items, dtype=np.int64)
    discount = np.zeros(n_items)
    first = date.fromisoformat(p.start_date)
    for d in range(p.days):
        reprice = rng.random(n_items) < P_REPRICE
        target = np.exp(REPRICE_TREND * world.item_trend * d + rng.normal(0.0, REPRICE_SD, n_items))
        current = np.where(reprice, np.clip(target, *PRICE_BOUNDS), current)
        friday = (first + timedelta(days=d)).weekday() == 4
        chance = P_PROMO * np.where(world.item_trend < 0, 2.0, 1.0) * (3.0 if friday else 1.0)
        start = (promo_left == 0) & (rng.random(n_items) < chance)
        promo_left = np.where(start, rng.integers(*PROMO_DAYS, size=n_items), promo_left)
        discount = np.where(start, rng.uniform(*PROMO_DISCOUNT, size=n_items), discount)
        list_multiple[d] = current
        sell[d] = current * np.where(promo_left > 0, 1.0 - discount, 1.0)
        promo_left = np.maximum(promo_left - 1, 0)
    world.list_multiple, world.sell_multiple = list_multiple, sell


def write_truth(world: _World, landing: Path) -> Path:
    """Each item's true elasticity and trend, for tests and benchmarks (never read by the pipeline)."""
    assert world.item_elasticity is not None and world.item_trend is not None
    names = pl.Series(CATEGORY_NAMES[: world.n_categories])
    path = landing / TRUTH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(world.item_category.size)],
            "category": names.gather(pl.Series(world.item_category)),
            "elasticity": world.item_elasticity,
            "trend_per_day": world.item_trend,
        }
    ).write_csv(path)
    return path


class _DayCatalog:
    """The items on sale on one day, laid out for fast sampling by category.

    Items are sorted by (category, position), so an item's neighbours in the sorted order are its
    most similar items, and each category is one contiguous segment of a cumulative weight array.
    """

    def __init__(self, world: _World, day_index: int) -> None:
        live = np.flatnonzero(world.item_created <= day_index)
        order = np.lexsort((world.item_position[live], world.item_category[live]))
        self.items = live[order]
        self.category = world.item_category[self.items]
        age = day_index - world.item_created[self.items]
        boost = 1.0 + np.where(world.item_created[self.items] > 0, LAUNCH_BOOST * np.exp(-age / LAUNCH_DECAY_DAYS), 0.0)
        weight = world.item_popularity[self.items] * boost
        if world.item_trend is not None:
            weight = weight * np.exp(world.item_trend[self.items] * day_index)
        self.cum = np.cumsum(weight)
        n_cat = world.n_categories
        self.seg_start = np.searchsorted(self.category, np.arange(n_cat), side="left")
        self.seg_end = np.searchsorted(self.category, np.arange(n_cat), side="right")
        before = np.concatenate([[0.0], self.cum])
        self.seg_lo = before[self.seg_start]
        self.seg_mass = before[self.seg_end] - self.seg_lo
        self.rank_of_item = np.full(world.item_category.shape[0], -1, dtype=np.int64)
        self.rank_of_item[self.items] = np.arange(self.items.size)

    def sample(self, categories: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw one item rank per requested category, by popularity; empty categories fall back to
        the whole catalog."""
        mass = self.seg_mass[categories]
        empty = mass <= 0
        lo = np.where(empty, 0.0, self.seg_lo[categories])
        mass = np.where(empty, self.cum[-1], mass)
        target = lo + rng.random(categories.size) * mass
        ranks = np.searchsorted(self.cum, target, side="right")
        return np.minimum(ranks, self.items.size - 1)

    def neighbour(self, ranks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A similar item: a few positions away inside the same category segment."""
        step = rng.integers(1, 4, size=ranks.size) * rng.choice([-1, 1], size=ranks.size)
        cat = self.category[ranks]
        return np.clip(ranks + step, self.seg_start[cat], self.seg_end[cat] - 1)


def _draw_categories(world: _World, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = rng.random(users.size)[:, None]
    return (world.user_pref_cum[users] < r).sum(axis=1).clip(0, world.n_categories - 1)


def _simulate_day(
    world: _World,
    day_index: int,
    day_start: datetime,
    n_sessions: int,
    last_bought: np.ndarray,
    rng: np.random.Generator,
    repeat_sessions: float = 0.3,
) -> dict[str, np.ndarray]:
    """Simulate every session that starts on one day; returns event columns as arrays."""
    catalog = _DayCatalog(world, day_index)
    live_users = np.flatnonzero(world.user_created <= day_index)
    activity = world.user_activity[live_users]
    users = live_users[rng.choice(live_users.size, size=n_sessions, p=activity / activity.sum())]

    hour = rng.choice(24, size=n_sessions, p=HOURLY_TRAFFIC / HOURLY_TRAFFIC.sum())
    start_s = hour * 3600.0 + rng.random(n_sessions) * 3600.0
    length = np.minimum(rng.geometric(1.0 / MEAN_SESSION_VIEWS, size=n_sessions), MAX_SESSION_VIEWS)
    sensitivity = world.user_sensitivity[users]

    category = _draw_categories(world, users, rng)
    rank = catalog.sample(category, rng)
    # Returning buyers often open on what they bought last time (consumables, replenishment).
    prior = last_bought[users]
    prior_rank = np.where(prior >= 0, catalog.rank_of_item[np.maximum(prior, 0)], -1)
    repeat = (prior_rank >= 0) & (rng.random(n_sessions) < repeat_sessions)
    rank = np.where(repeat, prior_rank, rank)
    category = np.where(repeat, catalog.category[np.maximum(rank, 0)], category)

    t = start_s.copy()
    views_s, views_rank, views_t = [], [], []
    carts_s, carts_rank, carts_t = [], [], []
    active = np.arange(n_sessions)
    for step in range(int(length.max())):
        active = active[length[active] > step]
        if active.size == 0:
            break
        if step > 0:
            prev = rank[active]
            r = rng.random(active.size)
            switch = r < P_SWITCH_CATEGORY
            near = (~switch) & (r < P_SWITCH_CATEGORY + P_NEIGHBOUR)
            fresh = ~(switch | near)
            new_rank = prev.copy()
            if switch.any():
                category[active[switch]] = _draw_categories(world, users[active[switch]], rng)
            redraw = switch | fresh
            if redraw.any():
                # Two candidates, the user keeps the one whose price suits them better.
                cats = category[active[redraw]]
                a, b = catalog.sample(cats, rng), catalog.sample(cats, rng)
                sens = sensitivity[active[redraw]]
                med = world.category_median_price[cats]
                ua = -sens * np.log(world.item_price[catalog.items[a]] / med) + rng.gumbel(size=a.size)
                ub = -sens * np.log(world.item_price[catalog.items[b]] / med) + rng.gumbel(size=b.size)
                new_rank[redraw] = np.where(ua >= ub, a, b)
            if near.any():
                new_rank[near] = catalog.neighbour(prev[near], rng)
            rank[active] = new_rank
            t[active] += rng.exponential(45.0, size=active.size) + 3.0
        views_s.append(active)
        views_rank.append(rank[active].copy())
        views_t.append(t[active].copy())

        # Cheap-for-this-user items in a liked category are carted more often.
        items = catalog.items[rank[active]]
        rel_price = np.log(world.item_price[items] / world.category_median_price[world.item_category[items]])
        p_cart = P_CART * np.exp(-0.6 * sensitivity[active] * rel_price).clip(0.2, 3.0)
        p_cart = np.where(repeat[active] & (step == 0), 0.6, p_cart)
        if world.sell_multiple is not None:  # demand answers today's price by the item's elasticity
            assert world.item_elasticity is not None
            response = world.sell_multiple[day_index, items] ** world.item_elasticity[items]
            p_cart = np.minimum(p_cart * response, 1.0)
        carted = rng.random(active.size) < p_cart
        if carted.any():
            gap = rng.exponential(20.0, size=int(carted.sum())) + 2.0
            carts_s.append(active[carted])
            carts_rank.append(rank[active[carted]].copy())
            carts_t.append(t[active[carted]] + gap)
            t[active[carted]] += gap

    v_s, v_rank, v_t = (np.concatenate(x) for x in (views_s, views_rank, views_t))
    if carts_s:
        c_s, c_rank, c_t = (np.concatenate(x) for x in (carts_s, carts_rank, carts_t))
    else:
        c_s = c_rank = np.zeros(0, dtype=np.int64)
        c_t = np.zeros(0)
    removed = rng.random(c_s.size) < P_REMOVE
    r_t = c_t[removed] + rng.exponential(60.0, size=int(removed.sum())) + 5.0
    checkout = rng.random(n_sessions) < P_CHECKOUT
    bought = (~removed) & checkout[c_s]
    # ``t`` now holds each session's last view or cart time: checkout comes after it.
    p_t = t[c_s[bought]] + rng.exponential(90.0, size=int(bought.sum())) + 10.0
    if removed.any():
        # A removal happens before checkout; push checkout after the session's last removal.
        last_removal = np.zeros(n_sessions)
        np.maximum.at(last_removal, c_s[removed], r_t)
        p_t = np.maximum(p_t, last_removal[c_s[bought]] + 5.0)

    p_items = catalog.items[c_rank[bought]]
    p_qty = np.where(world.item_price[p_items] < 20, 1 + rng.poisson(0.6, size=p_items.size), 1)
    # Remember the last purchase of each buyer for tomorrow's repeat sessions.
    order = np.argsort(p_t, kind="stable")
    last_bought[users[c_s[bought]][order]] = p_items[order]

    def block(
        sess: np.ndarray,
        ranks_or_items: np.ndarray,
        times: np.ndarray,
        etype: int,
        qty: np.ndarray | None = None,
        are_items: bool = False,
    ) -> dict[str, np.ndarray]:
        items = ranks_or_items if are_items else catalog.items[ranks_or_items]
        return {
            "session": sess,
            "item": items,
            "t": times,
            "type": np.full(sess.size, etype, dtype=np.int8),
            "qty": qty if qty is not None else np.ones(sess.size, dtype=np.int64),
        }

    blocks = [
        block(v_s, v_rank, v_t, 0),
        block(c_s, c_rank, c_t, 1),
        block(c_s[removed], c_rank[removed], r_t, 2),
        block(c_s[bought], p_items, p_t, 3, qty=p_qty, are_items=True),
    ]
    out = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    out["user"] = users[out["session"]]
    out["epoch_us"] = np.round((day_start.timestamp() + out["t"]) * 1e6)
    return out


def _events_frame(sim: dict[str, np.ndarray], world: _World, day_tag: str, day_index: int = 0) -> pl.DataFrame:
    multiple = 1.0 if world.sell_multiple is None else world.sell_multiple[day_index, sim["item"]]
    types = pl.Series(["view", "add_to_cart", "remove_from_cart", "purchase"])
    return pl.DataFrame(
        {
            "event_time": pl.Series(sim["epoch_us"].astype(np.int64)).cast(pl.Datetime("us", "UTC")),
            "user": sim["user"],
            "session": sim["session"],
            "item": sim["item"],
            "type": sim["type"],
            "price": np.round(world.item_price[sim["item"]] * multiple, 2),
            "quantity": sim["qty"],
        }
    ).select(
        "event_time",
        pl.concat_str(pl.lit("u"), pl.col("user").cast(pl.String)).alias("user_id"),
        pl.concat_str(pl.lit(f"s{day_tag}-"), pl.col("session").cast(pl.String)).alias("session_id"),
        pl.concat_str(pl.lit("i"), pl.col("item").cast(pl.String)).alias("item_id"),
        types.gather(pl.Series(sim["type"])).alias("event_type"),
        pl.col("price"),
        pl.col("quantity").cast(pl.Int32),
    )


def _catalog_frame(world: _World, day_index: int, price_factor: float = 1.0) -> pl.DataFrame:
    live = np.flatnonzero(world.item_created <= day_index)
    # The shop's price of the day: promotions included (what a checkout charges).
    multiple = 1.0 if world.sell_multiple is None else world.sell_multiple[day_index, live]
    names = pl.Series(CATEGORY_NAMES[: world.n_categories])
    return pl.DataFrame(
        {
            "item_id": pl.Series(live).cast(pl.String),
            "category": names.gather(pl.Series(world.item_category[live])),
            "brand": pl.Series(world.item_brand[live]).cast(pl.String),
            "price": np.round(world.item_price[live] * price_factor * multiple, 2),
        }
    ).select(
        pl.concat_str(pl.lit("i"), pl.col("item_id")).alias("item_id"),
        "category",
        pl.concat_str(pl.lit("brand"), pl.col("brand")).alias("brand"),
        "price",
    )


def _write(frame: pl.DataFrame, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "csv":
        out = frame
        if "event_time" in frame.columns:
            out = frame.with_columns(pl.col("event_time").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").alias("event_time"))
        out.write_csv(tmp)
    else:
        frame.write_parquet(tmp)
    tmp.replace(path)


def generate_shop_data(params: GenerateParams, landing: Path) -> list[GeneratedDay]:
    """Simulate ``params.days`` days of a shop and write them as raw landing files.

    Writes ``landing/events/events-YYYY-MM-DD.<fmt>`` (events whose UTC time falls on that day) and
    ``landing/catalog/catalog-YYYY-MM-DD.<fmt>`` (the items on sale that day).

    Args:
        params: size, seed, dates and output format.
        landing: the landing folder to write into.

    Returns:
        One entry per day written, with paths and counts.
    """
    if params.format not in ("csv", "parquet"):
        raise BadInput(f"generate.format must be 'csv' or 'parquet', got {params.format!r}")
    if params.days < 1 or params.events_per_day < 1:
        raise BadInput("generate.days and generate.events_per_day must be positive")
    if params.shift not in SHIFTS:
        raise BadInput(f"generate.shift must be one of {', '.join(SHIFTS)}, got {params.shift!r}")
    rng = np.random.default_rng(params.seed)
    world = _build_world(params, rng)
    risk = generate_risk.build_risk_world(world.user_pref_cum.shape[0], params.seed)
    last_bought = np.full(world.user_pref_cum.shape[0], -1, dtype=np.int64)
    first = date.fromisoformat(params.start_date)
    # Measured: about 1.15 events per view (carts, removals, purchases) in this funnel.
    events_per_session = MEAN_SESSION_VIEWS * 1.15
    written: list[GeneratedDay] = []
    carry: pl.DataFrame | None = None
    for d in range(params.days):
        day = first + timedelta(days=d)
        day_start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        volume = params.events_per_day * WEEKDAY_TRAFFIC[day.weekday()] / WEEKDAY_TRAFFIC.mean()
        n_sessions = max(1, round(volume / events_per_session))
        sim = _simulate_day(world, d, day_start, n_sessions, last_bought, rng, params.repeat_sessions)
        events = generate_risk.add_context(_events_frame(sim, world, day.strftime("%Y%m%d"), d), risk, params.seed, d)
        catalog = _catalog_frame(world, d, SHIFT_PRICE if params.shift == "prices" and d >= params.shift_day else 1.0)
        extra = generate_risk.signups(
            generate_risk.new_users_of(world.user_created, d),
            generate_risk.first_session_times(events),
            day_start,
            risk,
        )
        extra += generate_risk.fraud_day(
            risk,
            params.fraud_rate,
            events.filter(pl.col("event_type") == "purchase")["session_id"].n_unique(),
            d,
            day_start,
            np.flatnonzero(world.user_created < d) if d > 0 else np.arange(params.initial_users),
            catalog["item_id"].str.strip_prefix("i").cast(pl.Int64).to_numpy(),
            catalog["price"].to_numpy(),
            params.seed,
            params.chargeback_days,
        )
        generate_risk.first_party_day(risk, events, params.first_party_rate, d, params.seed, params.chargeback_days)
        next_start = day_start + timedelta(days=1)
        events = pl.concat(
            [
                *([carry] if carry is not None else []),
                events,
                generate_risk.rows_frame(extra),
                generate_risk.due_events(risk, next_start),
            ]
        )
        # Sessions that run past midnight belong to tomorrow's file, as in a real export.
        carry = events.filter(pl.col("event_time") >= next_start)
        events = events.filter(pl.col("event_time") < next_start).sort(
            "event_time", "session_id", "event_type", "item_id"
        )
        ext = params.format
        events_path = landing / "events" / f"events-{day.isoformat()}.{ext}"
        catalog_path = landing / "catalog" / f"catalog-{day.isoformat()}.{ext}"
        _write(events.select(EVENT_COLUMNS), events_path, ext)
        _write(catalog.select(CATALOG_COLUMNS), catalog_path, ext)
        written.append(GeneratedDay(day.isoformat(), events_path, catalog_path, events.height, catalog.height))
    if world.item_elasticity is not None:
        write_truth(world, landing)
    generate_risk.write_fraud_truth(risk, landing, end=next_start)
    return written
