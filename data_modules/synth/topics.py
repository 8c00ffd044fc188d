"""The synthetic world's own topic pool: the 72 Alipay-like life topics behind its D_uqa (paper 3.1).

This is data of the built-in world, not of the pipeline: ``qanchor synth`` writes it to the raw
folder as ``topics.json`` and ``qanchor build`` reads it from there like any user's topic file.
Keywords match whole words or phrases (see :class:`data_modules.contract.topics.Topic`).
"""

from __future__ import annotations

from data_modules.contract.topics import Topic, topic


def _t(name: str, question: str, keywords: str, modalities: str = "") -> Topic:
    return topic(
        name, question, keywords.split("|") if keywords else [""], modalities.split("|") if modalities else []
    )


WORLD_TOPICS: tuple[Topic, ...] = (
    _t("payments overview", "What does the user's payment history look like?", "", "bill"),
    _t("mini program usage", "Which mini programs does the user rely on?", "", "mini"),
    _t("app usage", "Which apps does the user use most?", "", "app"),
    _t("in-app navigation", "Where does the user go inside the app?", "", "spm"),
    _t("search interests", "What does the user search for?", "", "search"),
    _t("overall activity", "How active is the user on the platform overall?", ""),
    _t(
        "takeout habits",
        "How often does the user order takeout, and from where?",
        "takeout|waimai|ele.me|delivery",
    ),
    _t("coffee and tea", "Does the user buy coffee or tea drinks?", "coffee|luckin|starbucks|milk tea"),
    _t(
        "groceries",
        "How does the user shop for groceries?",
        "grocery|walmart|carrefour|familymart|lawson|wumart|hema",
    ),
    _t(
        "dining out",
        "How often does the user eat out at restaurants?",
        "dining|restaurant|hotpot|noodle|din tai fung|xibei",
    ),
    _t("commuting", "What are the user's daily commuting and travel habits?", "transit|metro|bus|bike"),
    _t("ride hailing", "Does the user take taxis or ride-hailing cars?", "ride_hailing|didi|taxi"),
    _t("household bills", "How does the user pay household bills?", "utilities|electricity|water|top-up"),
    _t("live music and concerts", "Is the user into concerts and live shows?", "concert|live|damai"),
    _t("movies", "Does the user go to the movies?", "movie|cinema|maoyan"),
    _t(
        "brand affinity",
        "Which brands does the user engage with?",
        "brand|nike|apple|uniqlo|starbucks|l'oreal|coca-cola",
    ),
    _t(
        "bargain hunting",
        "Does the user look for bargains?",
        "value|pinduoduo|discount|coupon|cheap|special offers|wholesale",
    ),
    _t(
        "big sales",
        "Does the user take part in big shopping festivals?",
        "big-sale|big_sale|double 11|618|sale",
    ),
    _t(
        "family and friends transfers",
        "How does the user send money to people they know?",
        "transferred|contact|transfer",
    ),
    _t(
        "account security",
        "Are there signs of risky payment behaviour?",
        "risk|risky_transfer|night|new payee|held",
    ),
    _t(
        "large incoming funds",
        "Does the user receive money from many sources?",
        "received|several accounts|inbound",
    ),
    _t("compliance reviews", "Has the user's account been reviewed?", "compliance|reviewed"),
    _t("health management", "How does the user manage health matters?", "health|hospital|pharmacy"),
    _t("mobile gaming", "Does the user play mobile games?", "game|games|mini_games|match|farm|puzzle"),
    _t("government services", "Does the user use government services?", "social security|tax|vehicle|gov"),
    _t("login habits", "How regularly does the user log in?", "login"),
    _t(
        "green living",
        "Does the user engage in green, low-carbon activities?",
        "forest|tree|energy|green|low-carbon",
    ),
    _t("interest community", "Is the user active in the interest community?", "community|post|like|comment"),
    _t(
        "wealth management",
        "How does the user manage wealth products?",
        "wealth|fund|yu'e bao|finance|tonghuashun|futu",
    ),
    _t("budgeting", "Does the user keep track of their spending?", "bills|summary|budget"),
    _t("social media", "Which social media does the user use?", "wechat|weibo|xiaohongshu|social"),
    _t("music streaming", "Does the user stream music?", "music"),
    _t("online shopping", "How does the user shop online?", "taobao|jd|pinduoduo|shopping"),
    _t("borrowing", "Does the user look for loans or credit?", "loan|cash advance|credit"),
    _t("risky apps", "Does the user use unverified or risky apps?", "unverified|remote control|crypto"),
    _t("food exploration", "How does the user discover food?", "food|hotpot|milk tea|dianping|meituan"),
    _t("cycling", "Does the user ride shared bikes?", "bike"),
    _t("fast food", "Does the user eat fast food?", "kfc|pizza hut"),
    _t("fresh produce", "Does the user buy fresh produce?", "hema|fresh"),
    _t("banking", "How does the user use banking services?", "bank"),
    _t("investment", "Does the user invest in funds or stocks?", "fund|futu|tonghuashun|stock"),
    _t("promotions", "Does the user respond to promotions?", "promo|red packet|venue"),
    _t("late-night activity", "Is the user active late at night?", "night"),
    _t("mobile top-ups", "How does the user top up their phone?", "top-up|china mobile"),
    _t("electricity", "How does the user pay for electricity?", "electricity|state grid"),
    _t("water bills", "How does the user pay for water?", "city water"),
    _t("sports and fitness", "Is the user into sports and fitness?", "nike|sport|fitness|gym"),
    _t("beauty", "Is the user interested in beauty products?", "l'oreal|beauty|cosmetic"),
    _t("beverages", "What drinks does the user buy?", "coca-cola|milk tea|coffee"),
    _t("electronics", "Does the user buy electronics?", "apple|electronics|jd"),
    _t("fashion", "What are the user's fashion purchases?", "uniqlo|nike|fashion"),
    _t("convenience stores", "Does the user shop at convenience stores?", "familymart|lawson"),
    _t("supermarkets", "Does the user shop at supermarkets?", "walmart|carrefour|wumart"),
    _t("brand campaigns", "Does the user join brand campaigns?", "campaign"),
    _t("coupons", "Does the user collect coupons?", "coupon"),
    _t(
        "shopping festivals",
        "Which shopping festivals does the user follow?",
        "festival|double 11|618|spring",
    ),
    _t("entertainment", "What entertainment does the user enjoy?", "movie|concert|music|game"),
    _t("news and information", "Where does the user get news and information?", "news|weibo"),
    _t("offline scan payments", "Does the user scan to pay offline?", "scan"),
    _t("home screen usage", "How does the user use the home screen?", "home"),
    _t("hotpot", "Does the user enjoy hotpot?", "hotpot|haidilao"),
    _t("noodles", "Does the user eat at noodle shops?", "noodle"),
    _t("local life services", "Does the user use local life services?", "dianping|meituan"),
    _t(
        "public services",
        "Does the user use public service mini programs?",
        "social security|tax|health code",
    ),
    _t("medical appointments", "Does the user book medical appointments?", "hospital booking"),
    _t("pharmacy", "Does the user buy from pharmacies?", "pharmacy"),
    _t("car ownership", "Are there signs that the user owns a car?", "vehicle|parking|gaode"),
    _t("maps and navigation", "Does the user use maps and navigation?", "gaode|map"),
    _t("peer payments", "How does the user pay other people?", "contact|payee"),
    _t("savings", "Does the user keep savings products?", "yu'e bao|savings"),
    _t("content creation", "Does the user create content in communities?", "post|comment"),
    _t("energy collection", "Does the user collect green energy?", "collect energy|green energy"),
)
assert len(WORLD_TOPICS) == 72, len(WORLD_TOPICS)
