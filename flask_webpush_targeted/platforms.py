"""The closed set of platforms the per-platform figures count: browser family and form factor.

A platform is derived from the User-Agent header the browser sent when it subscribed,
never from the device label, which a customer may have typed: a statistics key must not
keep text of a person after their erasure, and must not grow with every label typed.

A table of tokens, not a User-Agent parsing library: the figures need six browser
families and desktop/mobile, and a library's hundreds of families would still have to
be mapped onto them. ua-parser 1.0 (pure-Python resolver) took about 770 µs for a User-Agent
it had not seen and 2 µs from its cache; this table takes 2-3 µs for any User-Agent
(measured on the project's 2-core machine), and the worker counts a platform per delivery,
where User-Agents differ with every browser version.
"""

from __future__ import annotations

import re
from functools import lru_cache

#: the browser families counted by name; every other browser is "other"
FAMILIES = ("Chrome", "Firefox", "Safari", "Edge", "Samsung Internet", "Opera", "other")
#: every key the per-platform figures can have: family and form factor, or "unknown"
PLATFORMS: tuple[str, ...] = tuple(
    f"{family} {form}" for family in FAMILIES for form in ("desktop", "mobile")) + ("unknown",)

# Checked in order: Chromium-based browsers name Chrome and Safari too, Chrome names Safari,
# and browsers on iOS name their own token beside Safari's engine.
_FAMILY_TOKENS: tuple[tuple[str, str], ...] = (
    ("Edg/", "Edge"), ("EdgA/", "Edge"), ("EdgiOS/", "Edge"), ("Edge/", "Edge"),
    ("OPR/", "Opera"), ("OPT/", "Opera"), ("OPiOS/", "Opera"), ("Opera", "Opera"),
    ("SamsungBrowser/", "Samsung Internet"),
    # Chromium-based browsers with push of their own name, counted as "other", not Chrome
    ("YaBrowser/", "other"), ("UCBrowser/", "other"), ("MiuiBrowser/", "other"),
    ("HuaweiBrowser/", "other"), ("Vivaldi/", "other"), ("DuckDuckGo/", "other"),
    ("Silk/", "other"), ("QQBrowser/", "other"), ("Whale/", "other"),
    ("Firefox/", "Firefox"), ("FxiOS/", "Firefox"),
    ("CriOS/", "Chrome"), ("Chrome/", "Chrome"), ("Chromium/", "Chrome"),
    ("Safari/", "Safari"),
)
# iPadOS Safari sends the Mac's User-Agent by default: it counts as desktop, as it says.
_MOBILE_TOKENS = ("Mobi", "Android", "iPhone", "iPad", "iPod", "Tablet", "Windows Phone")
# A web app added to an iPhone's home screen (the only way iOS receives web push) sends
# WebKit's User-Agent without a Safari token: it is Safari's engine and Apple's push service.
_IOS_WEBKIT = ("iPhone", "iPad", "iPod")


@lru_cache(maxsize=4096)
def platform_of(user_agent: str | None) -> str:
    """The platform a device counts under, one of ``PLATFORMS``: "Chrome mobile", "unknown"..."""
    if user_agent is None or not user_agent.strip():
        return "unknown"
    family = next((name for token, name in _FAMILY_TOKENS if token in user_agent), None)
    if family is None:
        ios_webkit = "AppleWebKit/" in user_agent and any(t in user_agent for t in _IOS_WEBKIT)
        family = "Safari" if ios_webkit else "other"
    mobile = any(token in user_agent for token in _MOBILE_TOKENS)
    return f"{family} {'mobile' if mobile else 'desktop'}"


# The labels label_from_user_agent made, which were the platform keys before this set.
_OLD_LABEL = re.compile(r"(Edge|Opera|Samsung Internet|Firefox|Chrome|Chromium|Safari|Browser)"
                        r"(?: on (Android|iPhone|iPad|Windows|macOS|ChromeOS|Linux))?")
_OLD_FAMILY = {"Chromium": "Chrome", "Browser": "other"}


def platform_of_old_key(key: str) -> str:
    """The platform a per-platform counter keyed by a device label (as before this closed
    set) is folded into: its own key if it is one of ``PLATFORMS``, the platform of a label
    made from a User-Agent ("Firefox on Linux"), "unknown" for a label a customer typed."""
    if key in PLATFORMS:
        return key
    match = _OLD_LABEL.fullmatch(key)
    if match is None:
        return "unknown"
    family = _OLD_FAMILY.get(match[1], match[1])
    form = "mobile" if match[2] in ("Android", "iPhone", "iPad") else "desktop"
    return f"{family} {form}"
