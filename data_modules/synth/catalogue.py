"""What both synthetic worlds share: latent traits, the activity catalogue (which modality, texts,
rates and trait loadings), the scenarios with their label rule, the modality metadata and the
tabular features drawn from the traits.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from data_modules.contract.modalities import ModalityMeta
from data_modules.contract.scenarios import Scenario

TRAITS = (
    "activity", "foodie", "culture", "green", "social", "thrift",
    "brand", "promo", "wealth", "risk", "launder", "young",
)  # fmt: skip


AMOUNT_BANDS = np.array([10, 20, 50, 100, 200, 500, 1000, 5000], dtype=np.float64)


BAND_NAMES = ("0-10", "10-20", "20-50", "50-100", "100-200", "200-500", "500-1000", "1000-5000", "5000+")


START = dt.datetime(2026, 1, 1)


HISTORY_DAYS = 90


FUTURE_DAYS = 30


@dataclass(frozen=True)
class Activity:
    """One kind of event: its modality, the items it picks from, and how traits drive its rate."""

    category: str
    modality: str
    template: str
    items: tuple[str, ...]
    rate: float  # events per day for a user with all traits at 0
    loadings: dict[str, float] = field(default_factory=dict)
    amount: float | None = None  # median amount in CNY (bill only)


def _a(category, modality, template, items, rate, amount=None, **loadings) -> Activity:
    return Activity(category, modality, template, tuple(items), rate, loadings, amount)


PAY = "Paid {band} CNY at {item}"


MINI = "Opened mini program {item}"


APP = "Used app {item}"


SEARCH = "Searched '{item}'"


CATALOG: tuple[Activity, ...] = (
    # --- bill: payments -------------------------------------------------------------------------
    _a(
        "takeout",
        "bill",
        PAY,
        [
            "Meituan Takeout",
            "Ele.me",
            "KFC Delivery",
            "Luckin Coffee Delivery",
            "Pizza Hut Delivery",
            "Hema Fresh Delivery",
        ],
        0.012,
        35,
        foodie=1.0,
        young=0.4,
        activity=0.4,
    ),
    _a(
        "grocery",
        "bill",
        PAY,
        ["Walmart", "Carrefour", "FamilyMart", "Lawson", "Wumart"],
        0.18,
        60,
        thrift=0.3,
    ),
    _a(
        "dining",
        "bill",
        PAY,
        ["Haidilao Hotpot", "Xibei Restaurant", "Din Tai Fung", "Local Noodle Shop"],
        0.06,
        120,
        foodie=0.5,
        wealth=0.4,
    ),
    _a("transit", "bill", PAY, ["Metro Line Card", "City Bus", "Shared Bike"], 0.35, 4, young=0.3),
    _a("ride_hailing", "bill", PAY, ["DiDi Chuxing", "Gaode Taxi"], 0.04, 30, wealth=0.5),
    _a("utilities", "bill", PAY, ["State Grid Electricity", "City Water", "China Mobile Top-up"], 0.03, 150),
    _a("concert", "bill", PAY, ["Damai Concert Tickets", "Maoyan Live Show"], 0.0005, 480, culture=1.3),
    _a("movies", "bill", PAY, ["Maoyan Movies", "Wanda Cinema"], 0.02, 45, culture=0.8, young=0.3),
    _a(
        "brand_shopping",
        "bill",
        PAY,
        ["Nike Store", "Apple Store", "Uniqlo", "Starbucks"],
        0.03,
        300,
        brand=1.0,
        wealth=0.5,
    ),
    _a(
        "value_shopping",
        "bill",
        PAY,
        ["Pinduoduo", "Taobao Special Offers", "1688 Wholesale"],
        0.06,
        25,
        thrift=1.0,
    ),
    _a("transfer", "bill", "Transferred {band} CNY to a contact", ["contact"], 0.06, 200, social=0.5),
    _a(
        "risky_transfer",
        "bill",
        "Transferred {band} CNY to a new payee at night",
        ["payee"],
        0.003,
        800,
        risk=1.6,
    ),
    _a(
        "inbound_transfers",
        "bill",
        "Received {band} CNY from several accounts",
        ["accounts"],
        0.002,
        3000,
        launder=1.7,
    ),
    _a("fraud_flag", "bill", "Payment held by risk control", ["risk control"], 0.0003, risk=1.8),
    _a("aml_flag", "bill", "Account reviewed by compliance", ["compliance"], 0.0003, launder=1.8),
    # --- mini: mini programs --------------------------------------------------------------------
    _a("mini_takeout", "mini", MINI, ["Meituan Waimai", "Ele.me Mini"], 0.005, foodie=0.9, young=0.3),
    _a(
        "brand_campaign",
        "mini",
        "Joined brand campaign of {item}",
        ["Nike", "Starbucks", "L'Oreal", "Coca-Cola", "Apple"],
        0.003,
        brand=1.5,
    ),
    _a(
        "big_sale",
        "mini",
        "Browsed big-sale event {item}",
        ["Double 11 Festival", "618 Mid-year Sale", "Spring Shopping Week"],
        0.007,
        promo=1.4,
    ),
    _a(
        "value_deals",
        "mini",
        "Claimed cost-performance coupon at {item}",
        ["Pinduoduo Deals", "Taobao Value Zone", "Daily Discount"],
        0.003,
        thrift=1.4,
    ),
    _a("mini_health", "mini", MINI, ["Health Code", "Hospital Booking", "Pharmacy"], 0.02),
    _a("mini_games", "mini", MINI, ["Happy Match", "Farm Story", "Word Puzzle"], 0.03, young=0.8),
    _a("mini_gov", "mini", MINI, ["Social Security", "Tax Service", "Vehicle Registry"], 0.01, young=-0.5),
    # --- spm: in-app navigation paths -----------------------------------------------------------
    _a("login", "spm", "{item}", ["Alipay > login > home", "Alipay > login > scan"], 0.02, activity=1.3),
    _a(
        "forest",
        "spm",
        "{item}",
        ["Ant Forest > collect energy", "Ant Forest > water a friend's tree", "Ant Forest > plant a tree"],
        0.008,
        green=1.4,
    ),
    _a(
        "community",
        "spm",
        "{item}",
        [
            "Interest community > browse posts",
            "Interest community > like",
            "Interest community > comment",
            "Interest community > post",
        ],
        0.005,
        social=1.2,
        culture=0.4,
    ),
    _a(
        "wealth_page",
        "spm",
        "{item}",
        ["Wealth > funds > fund details", "Wealth > Yu'e Bao"],
        0.03,
        wealth=0.9,
    ),
    _a("bills_page", "spm", "{item}", ["Me > bills > monthly summary"], 0.04, thrift=0.4),
    _a(
        "concert_page",
        "spm",
        "{item}",
        ["Damai > concert listings", "Damai > artist page"],
        0.0007,
        culture=1.3,
    ),
    _a("promo_page", "spm", "{item}", ["Home > big-sale venue", "Home > red packet rain"], 0.01, promo=1.0),
    # --- app: installed / used apps -------------------------------------------------------------
    _a("app_social", "app", APP, ["WeChat", "Weibo", "Xiaohongshu"], 0.1, social=0.6),
    _a("app_food", "app", APP, ["Meituan", "Dianping"], 0.04, foodie=0.8),
    _a("app_music", "app", APP, ["NetEase Cloud Music", "QQ Music", "Damai"], 0.03, culture=1.0),
    _a("app_shopping", "app", APP, ["Taobao", "JD", "Pinduoduo"], 0.08, promo=0.5, thrift=0.4),
    _a("app_finance", "app", APP, ["Tonghuashun", "Futu", "Bank App"], 0.02, wealth=1.0),
    _a(
        "app_risky",
        "app",
        APP,
        ["Unverified Loan App", "Remote Control Helper", "Crypto OTC"],
        0.002,
        risk=1.5,
        launder=0.6,
    ),
    _a("app_green", "app", APP, ["Low-carbon Life", "Bike Sharing"], 0.01, green=1.0),
    # --- search: on-platform queries ------------------------------------------------------------
    _a("search_food", "search", SEARCH, ["takeout near me", "milk tea", "hotpot"], 0.02, foodie=0.8),
    _a("search_concert", "search", SEARCH, ["concert tickets", "live house"], 0.002, culture=1.3),
    _a("search_promo", "search", SEARCH, ["double 11 deals", "red packet"], 0.004, promo=1.2),
    _a("search_value", "search", SEARCH, ["cheap deals", "coupon"], 0.004, thrift=1.2),
    _a("search_loan", "search", SEARCH, ["quick loan", "cash advance"], 0.002, risk=1.4, launder=0.5),
    _a("search_forest", "search", SEARCH, ["ant forest", "green energy"], 0.003, green=1.2),
    _a("search_brand", "search", SEARCH, ["nike", "starbucks"], 0.003, brand=1.2),
)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("Active", "Will the user be active in the interest community?", "User Engagement",
             ("community",), description="Any interest-community activity (browse, like, comment, post)."),
    Scenario("Concert", "Will the user click concert-related content?", "User Engagement",
             ("concert", "concert_page"), description="Any concert ticket payment or concert page visit."),
    Scenario("Login", "Will the user log in?", "User Engagement", ("login",),
             description="At least one login event."),
    Scenario("Forest", "Will the user engage with Ant Forest?", "User Engagement", ("forest",),
             description="Any Ant Forest interaction."),
    Scenario("Fraud", "Will the user be flagged for a fraud-related risk event?", "Risk", ("fraud_flag",),
             description="A payment held by risk control."),
    Scenario("Money", "Will the user be flagged for money laundering?", "Risk", ("aml_flag",),
             description="An account review by compliance."),
    Scenario("Takeout", "Will the user show interest in takeout services?", "Marketing Sensitivity",
             ("takeout", "mini_takeout"), description="Any takeout payment or takeout mini-program visit."),
    Scenario("Brand", "Will the user respond to brand campaigns?", "Marketing Sensitivity",
             ("brand_campaign",), description="Joins a brand campaign."),
    Scenario("Promo", "Will the user respond to big-sale promotions?", "Marketing Sensitivity",
             ("big_sale",), description="Browses a big-sale event."),
    Scenario("Value", "Will the user respond to cost-performance offers?", "Marketing Sensitivity",
             ("value_deals",), description="Claims a cost-performance coupon."),
)  # fmt: skip


MODALITY_META: tuple[ModalityMeta, ...] = (
    ModalityMeta("bill", "payments", "CNY", "amount"),
    ModalityMeta("mini", "mini programs"),
    ModalityMeta("spm", "in-app navigation"),
    ModalityMeta("app", "apps"),
    ModalityMeta("search", "searches"),
)


def band_index(amounts: np.ndarray) -> np.ndarray:
    return np.searchsorted(AMOUNT_BANDS, amounts, side="right")


def tabular_features(rng: np.random.Generator, traits: np.ndarray) -> dict[str, np.ndarray]:
    t = {name: traits[:, i] for i, name in enumerate(TRAITS)}
    n = traits.shape[0]
    noise = lambda: rng.standard_normal(n)  # noqa: E731
    return {
        "age": np.clip(np.round(36 - 9 * t["young"] + 6 * noise()), 18, 80).astype(np.int64),
        "balance_log": 8 + 1.3 * t["wealth"] + 0.8 * noise(),
        "monthly_income_log": 8.5 + 0.8 * t["wealth"] + 0.5 * noise(),
        "account_age_days": np.round(1500 - 500 * t["young"] + 400 * noise()).clip(30, 6000).astype(np.int64),
        "n_cards": rng.poisson(np.exp(0.6 + 0.3 * t["wealth"])).astype(np.int64),
        "credit_score": np.round(650 + 40 * t["wealth"] - 45 * t["risk"] + 30 * noise()).astype(np.int64),
        "city_tier": np.clip(np.round(2.5 - 0.7 * t["wealth"] + noise()), 1, 4).astype(np.int64),
        "n_contacts": rng.poisson(np.exp(3 + 0.5 * t["social"])).astype(np.int64),
        "is_verified": (rng.random(n) > 0.05 + 0.1 * (t["risk"] > 1.5)).astype(np.float64),
    }
