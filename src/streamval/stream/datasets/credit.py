"""The credit portfolio generator: the reference paper's private data set, rebuilt in the open.

The paper values a retail credit book: 5,000 customers (3,000 train / 800 validation / 1,200 test),
static age, income and risk tier, 24 monthly records of repayment behaviour and credit-score
changes, 2,000 normal and 1,000 high-volatility series in the training set, a label equal to the
present value of the customer's expected 3-year income, and a policy tightening at month 18 that
lowers high-risk customers' credit scores. Its data is private, so `generate` simulates a book
with that design. Every number that shapes it is a field of `CreditPortfolioParams`, documented
there; nothing is tuned to favour one valuation method.

Model, per customer i in latent group g (weights `group_weights`):

* static: age (years), annual income (lognormal), long-run score level mu_i; risk tier from mu_i
  ("high" below `high_risk_below`, "mid" below `low_risk_from`, else "low").
* credit score, monthly: s_t = s_{t-1} + kappa_g (mu_i - s_{t-1}) + drift_g
  + beta_g (r_{t-1} - rbar_g) 100 + sigma_g v_i e_t, clipped to [300, 850], rbar_g the group's
  mean repayment ratio;
  v_i = `high_volatility_multiplier` for high-volatility series, else 1.
* repayment ratio (paid / due, in [0, 1]): group 0 steady, group 1 seasonal (12-month cycle),
  group 2 switches into a stress regime with a probability that rises as the score falls.
* value (the label): PV_t = m_t * A_g with expected monthly income
  m_t = income / 12 * share_g * q_t, repayment probability
  q_t = sigmoid(a_g + b_g (s_t - 650) / 100 + c_g (h_t - 0.9) / 0.1),
  h_t the exponentially weighted repayment history (memory `repayment_memory_g`), and
  A_g = sum_{k=1..36} ((1 + growth_g) / (1 + d))^k the 3-year annuity factor at the monthly
  discount rate d = (1 + `annual_discount_rate`)^(1/12) - 1; times lognormal appraisal noise.
* policy tightening at month index `shock_month`: high-tier customers' scores (and long-run
  levels) drop by `shock_score_drop` points; their valuations follow through q_t.

All random draws are made up front from one `numpy.random.Generator(seed)`, in a fixed order,
so the book is a pure function of the parameters, and switching the shock off changes nothing
but the shocked customers from the shock month on.

>>> book = generate(n_customers=50)
>>> len(book.customers), len(book.frame)
(50, 1200)
>>> book.customers["split"].value_counts().to_dict()
{'train': 30, 'test': 12, 'validation': 8}
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from streamval.stream.contract.schema import ASSET_ID, TS, VALUE, AssetEvent, parse_timestamp
from streamval.stream.datasets.event_table import EventTable

FEATURES = ("repayment_ratio", "credit_score")
ATTRIBUTES = ("age", "income", "tier")
SPLITS = ("train", "validation", "test")


def annuity_factor(annual_rate: float, months: int, monthly_growth: float = 0.0) -> float:
    """Present value of 1 a month for `months` months (first payment in one month), growing.

    The discount rate is monthly, d = (1 + annual_rate)^(1/12) - 1. The book's labels and the
    DCF baseline (`streamval.models.baselines.income`) both use this one formula.

    >>> round(annuity_factor(0.0, 36), 6)
    36.0
    >>> round(annuity_factor(0.08, 12), 4)  # 12 payments at (1.08)^(1/12) - 1 a month
    11.5129
    """
    d = (1.0 + annual_rate) ** (1.0 / 12.0) - 1.0
    ratio = (1.0 + monthly_growth) / (1.0 + d)
    return float(np.sum(ratio ** np.arange(1, months + 1)))


@dataclass(frozen=True)
class CreditPortfolioParams:
    """Every parameter of the credit book, with why it has its value.

    Book design (the paper's):
        n_customers: 5,000 customers.
        split_fractions: 3,000 / 800 / 1,200 train / validation / test (0.6 / 0.16 / 0.24).
        high_volatility_fraction: 1/3 of each split (2,000 normal + 1,000 high-volatility in train).
        n_months: 24 monthly records per customer.
        start: first month, 2022-01-01 UTC. With 0-based month indices, `shock_month` 18 is
            2023-07-01, inside the 2022-2023 tightening cycle (the last Fed hike was July 2023),
            leaving 6 post-shock months.
        shock_month: 18, the paper's policy tightening. None switches the shock off.
        horizon_months: 36, the label's 3-year income horizon.
        annual_discount_rate: 8% a year, a typical cost of capital for unsecured retail credit
            (policy rate about 5% in 2023 plus a funding/risk spread); monthly rate
            (1.08)^(1/12) - 1, about 0.643%.
        seed: 20220101, fixed so that every run builds the same book.

    Customers:
        group_weights: share of the three latent groups (45% steady prime borrowers, 35% young
            borrowers with seasonal income, 20% fragile subprime borrowers). The group is latent:
            it is in the metadata, never in the events.
        age_range: per group, uniform integer age bounds; groups differ so profiles carry signal.
        income_median / income_sigma: per group, lognormal annual income (median in currency
            units, log-sd); prime borrowers earn more.
        score_level_mean / score_level_sd: per group, normal long-run credit score mu_i.
        high_risk_below / low_risk_from: tier cut-offs on mu_i (FICO-like: below 620 subprime =
            "high" risk, 620-699 "mid", 700 and up "low").

    Dynamics (per group):
        score_reversion: kappa_g, monthly pull of the score towards mu_i (0.25 steady, 0.10
            seasonal, 0.05 fragile: fragile scores wander).
        score_drift: drift_g points a month (young borrowers build credit, +1.5/month; fragile
            borrowers repair +1/month as old delinquencies age, offsetting part of the losses of
            their stress spells, so their scores still trend slowly down).
        score_repayment_beta: beta_g, score points per 1 percentage point of repayment shortfall
            below the group's mean ratio in the previous month (0.3 / 0.4 / 0.3).
        score_sigma: sigma_g, monthly score noise in points.
        high_volatility_multiplier: 2.5x the score, repayment and appraisal noise for
            high-volatility series.
        repayment_mean / repayment_sd: per group, mean and monthly noise of the repayment ratio.
        seasonal_amplitude: group 1's repayment cycle amplitude (12-month period, random phase).
        stress_base / stress_per_100pts / stress_repayment / stress_exit: group 2's stress regime:
            monthly entry probability stress_base + stress_per_100pts per 100 points below 650,
            repayment ratio in stress, monthly exit probability.

    Value function (per group):
        income_share: share_g, the part of monthly income the customer pays to the book
            (debt service ratio: 25% / 30% / 35%).
        repay_intercept / repay_score_slope / repay_history_slope: a_g, b_g, c_g of q_t; the
            fragile group's value is most sensitive to its score, the seasonal group's to its
            repayment history.
        repayment_memory: the EWMA weight of the newest repayment ratio in h_t (0.2 / 0.5 / 0.35).
        income_growth: monthly income growth of the group (0.2% / 0.4% / 0.0%).
        appraisal_noise: log-sd of the multiplicative noise on the observed value (1%).

    Shock:
        shock_score_drop: 60 points off the score and long-run level of "high"-tier customers.
    """

    n_customers: int = 5000
    split_fractions: tuple[float, float, float] = (0.6, 0.16, 0.24)
    high_volatility_fraction: float = 1 / 3
    n_months: int = 24
    start: str = "2022-01-01"
    shock_month: int | None = 18
    horizon_months: int = 36
    annual_discount_rate: float = 0.08
    seed: int = 20220101

    group_weights: tuple[float, float, float] = (0.45, 0.35, 0.20)
    age_range: tuple[tuple[int, int], ...] = ((35, 70), (21, 35), (25, 60))
    income_median: tuple[float, ...] = (72_000.0, 45_000.0, 34_000.0)
    income_sigma: tuple[float, ...] = (0.35, 0.30, 0.40)
    score_level_mean: tuple[float, ...] = (735.0, 670.0, 595.0)
    score_level_sd: tuple[float, ...] = (35.0, 40.0, 40.0)
    high_risk_below: float = 620.0
    low_risk_from: float = 700.0

    score_reversion: tuple[float, ...] = (0.25, 0.10, 0.05)
    score_drift: tuple[float, ...] = (0.0, 1.5, 1.0)
    score_repayment_beta: tuple[float, ...] = (0.3, 0.4, 0.3)
    score_sigma: tuple[float, ...] = (4.0, 8.0, 12.0)
    high_volatility_multiplier: float = 2.5
    repayment_mean: tuple[float, ...] = (0.97, 0.92, 0.90)
    repayment_sd: tuple[float, ...] = (0.015, 0.03, 0.04)
    seasonal_amplitude: float = 0.06
    stress_base: float = 0.05
    stress_per_100pts: float = 0.10
    stress_repayment: float = 0.55
    stress_exit: float = 0.35

    income_share: tuple[float, ...] = (0.25, 0.30, 0.35)
    repay_intercept: tuple[float, ...] = (2.5, 1.5, 0.5)
    repay_score_slope: tuple[float, ...] = (0.8, 0.6, 1.6)
    repay_history_slope: tuple[float, ...] = (0.3, 0.9, 0.6)
    repayment_memory: tuple[float, ...] = (0.2, 0.5, 0.35)
    income_growth: tuple[float, ...] = (0.002, 0.004, 0.0)
    appraisal_noise: float = 0.01

    shock_score_drop: float = 60.0

    def __post_init__(self) -> None:
        if self.n_customers < 3:
            raise ValueError("n_customers must be at least 3 (one per split)")
        if not np.isclose(sum(self.split_fractions), 1.0):
            raise ValueError(f"split_fractions must sum to 1, got {self.split_fractions}")
        if not np.isclose(sum(self.group_weights), 1.0):
            raise ValueError(f"group_weights must sum to 1, got {self.group_weights}")
        if self.shock_month is not None and not 0 < self.shock_month < self.n_months:
            raise ValueError(f"shock_month must be in 1..{self.n_months - 1}")

    @property
    def monthly_discount_rate(self) -> float:
        """d = (1 + annual rate)^(1/12) - 1."""
        return float((1 + self.annual_discount_rate) ** (1 / 12) - 1)

    def annuity_factor(self, group: int) -> float:
        """A_g: present value of 1 a month for `horizon_months`, growing at the group's rate."""
        return annuity_factor(
            self.annual_discount_rate, self.horizon_months, self.income_growth[group]
        )

    def split_sizes(self) -> dict[str, int]:
        """Customers per split; the test split takes the rounding remainder."""
        train = round(self.n_customers * self.split_fractions[0])
        validation = round(self.n_customers * self.split_fractions[1])
        return {
            "train": train,
            "validation": validation,
            "test": self.n_customers - train - validation,
        }

    def month_ts_ms(self) -> np.ndarray:
        """Epoch ms of each month (first day, 00:00 UTC)."""
        months = pd.date_range(pd.Timestamp(self.start, tz="UTC"), periods=self.n_months, freq="MS")
        return np.asarray([parse_timestamp(m.isoformat()) for m in months], dtype=np.int64)


@dataclass(frozen=True)
class CreditPortfolio:
    """A generated book: the long event table, per-customer metadata and the shock time.

    `customers` is indexed by asset_id with columns split, group (latent, 0..2), high_volatility,
    high_risk (tier == "high"), shocked (high_risk and the shock is on), age, income, tier.
    """

    params: CreditPortfolioParams
    table: EventTable
    customers: pd.DataFrame
    shock_ts_ms: int | None
    month_ts_ms: tuple[int, ...] = field(repr=False, default=())

    @property
    def frame(self) -> pd.DataFrame:
        """Long frame: asset_id, ts (epoch ms), value, repayment_ratio, credit_score, age, income,
        tier, month (0-based index), in event-time order."""
        return self.table.frame

    def events(self) -> Iterator[AssetEvent]:
        """All events in event-time order (month by month, customers by id within a month)."""
        return self.table.events()

    def split(self, name: str) -> CreditPortfolio:
        """The customers of one split ("train", "validation" or "test") only."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        ids = self.customers.index[self.customers["split"] == name]
        frame = self.frame[self.frame[ASSET_ID].isin(ids)]
        return replace(self, table=self.table.with_frame(frame), customers=self.customers.loc[ids])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def generate(
    params: CreditPortfolioParams | None = None, *, n_customers: int | None = None
) -> CreditPortfolio:
    """Generate the credit book described by `params` (defaults: the paper's design).

    `n_customers` scales the book down (or up) keeping every proportion, for tests and quick
    modes; it overrides `params.n_customers`.
    """
    p = params or CreditPortfolioParams()
    if n_customers is not None:
        p = replace(p, n_customers=n_customers)
    rng = np.random.default_rng(p.seed)
    n, t_len = p.n_customers, p.n_months

    # Splits, each with the same share of high-volatility series.
    sizes = p.split_sizes()
    order = rng.permutation(n)
    split = np.empty(n, dtype=object)
    high_vol = np.zeros(n, dtype=bool)
    start = 0
    for name in SPLITS:
        members = order[start : start + sizes[name]]
        split[members] = name
        high_vol[members[: round(len(members) * p.high_volatility_fraction)]] = True
        start += sizes[name]

    # Static profile.
    group = rng.choice(3, size=n, p=np.asarray(p.group_weights))
    u_age, z_income, z_level = rng.random(n), rng.standard_normal(n), rng.standard_normal(n)
    lo = np.asarray([p.age_range[g][0] for g in group])
    hi = np.asarray([p.age_range[g][1] for g in group])
    age = np.floor(lo + u_age * (hi - lo + 1)).astype(int)
    income = np.asarray(p.income_median)[group] * np.exp(
        np.asarray(p.income_sigma)[group] * z_income
    )
    income = np.round(income, -2)
    level = np.asarray(p.score_level_mean)[group] + np.asarray(p.score_level_sd)[group] * z_level
    tier = np.where(
        level < p.high_risk_below, "high", np.where(level < p.low_risk_from, "mid", "low")
    )
    high_risk = tier == "high"
    shocked = high_risk & (p.shock_month is not None)

    # Innovations, drawn up front so that the shock changes nothing else.
    e_score = rng.standard_normal((n, t_len))
    e_repay = rng.standard_normal((n, t_len))
    u_stress = rng.random((n, t_len))
    e_value = rng.standard_normal((n, t_len))
    phase = rng.random(n) * 12.0
    s0 = level + np.asarray(p.score_level_sd)[group] * 0.5 * rng.standard_normal(n)

    vol = np.where(high_vol, p.high_volatility_multiplier, 1.0)
    kappa = np.asarray(p.score_reversion)[group]
    drift = np.asarray(p.score_drift)[group]
    beta = np.asarray(p.score_repayment_beta)[group]
    sigma = np.asarray(p.score_sigma)[group]
    r_mean = np.asarray(p.repayment_mean)[group]
    r_sd = np.asarray(p.repayment_sd)[group]
    memory = np.asarray(p.repayment_memory)[group]

    score = np.empty((n, t_len))
    repay = np.empty((n, t_len))
    history = np.empty((n, t_len))
    mu = level.copy()
    s_prev, r_prev, h_prev = np.clip(s0, 300, 850), r_mean.copy(), r_mean.copy()
    stressed = np.zeros(n, dtype=bool)
    for t in range(t_len):
        if p.shock_month is not None and t == p.shock_month:
            mu = np.where(shocked, mu - p.shock_score_drop, mu)
            s_prev = np.where(shocked, s_prev - p.shock_score_drop, s_prev)
        s = (
            s_prev
            + kappa * (mu - s_prev)
            + drift
            + beta * (r_prev - r_mean) * 100
            + sigma * vol * e_score[:, t]
        )
        s = np.clip(s, 300.0, 850.0)
        # Repayment: steady (0), seasonal (1), stress-regime (2).
        base = r_mean + r_sd * vol * e_repay[:, t]
        seasonal = p.seasonal_amplitude * np.sin(2 * np.pi * (t + phase) / 12.0)
        enter = p.stress_base + p.stress_per_100pts * np.maximum(0.0, 650.0 - s) / 100.0
        stressed = np.where(stressed, u_stress[:, t] >= p.stress_exit, u_stress[:, t] < enter)
        r = np.where(group == 1, base + seasonal, base)
        r = np.where((group == 2) & stressed, p.stress_repayment + r_sd * vol * e_repay[:, t], r)
        r = np.clip(r, 0.0, 1.0)
        h = (1 - memory) * h_prev + memory * r
        score[:, t], repay[:, t], history[:, t] = s, r, h
        s_prev, r_prev, h_prev = s, r, h

    a = np.asarray(p.repay_intercept)[group][:, None]
    b = np.asarray(p.repay_score_slope)[group][:, None]
    c = np.asarray(p.repay_history_slope)[group][:, None]
    q = _sigmoid(a + b * (score - 650.0) / 100.0 + c * (history - 0.9) / 0.1)
    monthly = (income / 12.0 * np.asarray(p.income_share)[group])[:, None] * q
    annuity = np.asarray([p.annuity_factor(g) for g in range(3)])[group][:, None]
    noise = np.exp(p.appraisal_noise * vol[:, None] * e_value)
    value = monthly * annuity * noise

    width = max(5, len(str(n)))
    ids = np.asarray([f"C{i:0{width}d}" for i in range(n)])
    months = p.month_ts_ms()
    # Month-major (event-time) order; ids sort like their index, so this is already sorted.
    frame = pd.DataFrame(
        {
            ASSET_ID: np.tile(ids, t_len),
            TS: np.repeat(months, n),
            VALUE: np.round(value, 2).T.ravel(),
            "repayment_ratio": np.round(repay, 4).T.ravel(),
            "credit_score": np.round(score, 1).T.ravel(),
            "age": np.tile(age, t_len).astype(float),
            "income": np.tile(income, t_len),
            "tier": np.tile(tier, t_len),
            "month": np.repeat(np.arange(t_len), n),
        }
    )
    table = EventTable.from_frame(frame, features=FEATURES, attributes=ATTRIBUTES, extra=("month",))
    customers = pd.DataFrame(
        {
            "split": split,
            "group": group,
            "high_volatility": high_vol,
            "high_risk": high_risk,
            "shocked": shocked,
            "age": age,
            "income": income,
            "tier": tier,
        },
        index=pd.Index(ids, name=ASSET_ID),
    )
    shock_ts = int(months[p.shock_month]) if p.shock_month is not None else None
    return CreditPortfolio(p, table, customers, shock_ts, tuple(int(m) for m in months))
