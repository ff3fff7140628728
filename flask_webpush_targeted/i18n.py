"""The package's own translations: its gettext catalog, and the language of each request.

Every string a customer or an administrator sees goes through ``gettext`` here (in the
templates: ``webpush_gettext`` and ``webpush_ngettext``, names of the package's own, so
that a host's ``_`` and ``gettext`` globals, Flask-Babel's for one, stay the host's).
The messages are English; ``translations/`` holds the other languages' catalogs.

The language of a request, in this order: the host's ``@webpush.locale_selector``
callback; Flask-Babel's ``get_locale()`` when the host uses Flask-Babel; the request's
``Accept-Language``; else WEBPUSH_DEFAULT_LANGUAGE (English when the package has no
catalog for it).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from decimal import Decimal
from gettext import NullTranslations
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.numbers import format_currency
from babel.support import LazyProxy, Translations
from flask import current_app, g, has_request_context, request

from .languages import best_match, is_language, normalized, primary

log = logging.getLogger(__name__)

#: the folder of the catalogs: ``<language>/LC_MESSAGES/messages.mo``
TRANSLATIONS_DIR = os.path.join(os.path.dirname(__file__), "translations")
#: the catalog's gettext domain
DOMAIN = "messages"
#: the languages the package speaks: English (the messages themselves) and those with a
#: catalog in ``translations/``
LANGUAGES = ("en", "pl")
#: the package's language when nothing else decides
SOURCE_LANGUAGE = "en"

#: a host's ``@webpush.locale_selector``: a language tag for the current request, or None
LocaleSelector = Callable[[], "str | None"]


@functools.cache
def translations(language: str) -> NullTranslations:
    """The catalog of ``language`` (one of LANGUAGES), loaded once per process; English
    and any language without a catalog translate nothing."""
    if language == SOURCE_LANGUAGE or language not in LANGUAGES:
        return NullTranslations()
    # Translations.load falls back to NullTranslations when the .mo file is missing.
    return Translations.load(TRANSLATIONS_DIR, [language], DOMAIN)


def requested_language() -> str | None:
    """The language tag the current request asks for, in the order above (None: nothing
    says, or no request)."""
    if not has_request_context():
        return None
    selector: LocaleSelector | None = getattr(
        current_app.extensions.get("webpush"), "_locale_selector", None)
    if selector is not None:
        try:
            tag = selector()
        except Exception:  # the host's code: a bug in it must not break the page
            log.warning("@webpush.locale_selector raised; the next source decides the "
                        "language", exc_info=True)
            tag = None
        if tag:
            return _tag(str(tag))
    if "babel" in current_app.extensions:
        tag = _flask_babel_locale()
        if tag:
            return tag
    return None


def _flask_babel_locale() -> str | None:
    """The host's Flask-Babel locale as a BCP 47 tag ("pt_BR" -> "pt-BR"), or None."""
    try:
        from flask_babel import get_locale  # the host's, when it has one
    except ImportError:
        return None
    locale = get_locale()
    return _tag(str(locale)) if locale is not None else None


def _tag(value: str) -> str:
    return normalized(value.replace("_", "-"))


def pick_language(available: Sequence[str], default: str) -> str:
    """The one of ``available`` for the current request: the requested language's best
    match, else the best of its ``Accept-Language``, else ``default``."""
    tag = requested_language()
    if tag is not None:
        return best_match(tag, available, default)
    if has_request_context():
        # The customer's languages best first, each matched whole or by its primary subtag:
        # "en-GB, pl;q=0.5" is English (werkzeug's best_match would take the exact "pl").
        for value, _quality in request.accept_languages:
            if is_language(value):
                match = best_match(value, available, "")
                if match:
                    return match
    return default


def default_language() -> str:
    """WEBPUSH_DEFAULT_LANGUAGE when the package speaks it (its primary subtag), else
    English."""
    try:
        configured = current_app.config.get("WEBPUSH_DEFAULT_LANGUAGE") or SOURCE_LANGUAGE
    except RuntimeError:  # no app: a module-level label read at import, a script
        return SOURCE_LANGUAGE
    first = primary(str(configured))
    return first if first in LANGUAGES else SOURCE_LANGUAGE


def current_language() -> str:
    """The package's language for the current request (one of LANGUAGES), decided once per
    request; outside a request, the default one."""
    if not has_request_context():
        return default_language()
    chosen: str | None = g.get("_webpush_language")
    if chosen is None:
        chosen = pick_language(LANGUAGES, default_language())
        g._webpush_language = chosen
    return chosen


def gettext(message: str, **variables: Any) -> str:
    """``message`` in the current request's language, ``%(name)s`` filled from
    ``variables``."""
    text = translations(current_language()).gettext(message)
    return text % variables if variables else text


def ngettext(singular: str, plural: str, num: int, **variables: Any) -> str:
    """The form of ``singular``/``plural`` for ``num`` in the current language (Polish has
    three), ``%(num)s`` and the ``variables`` filled."""
    variables.setdefault("num", num)
    return translations(current_language()).ngettext(singular, plural, num) % variables


def N_(message: str) -> str:  # noqa: N802 (gettext's name for it, a default keyword)
    """Mark ``message`` for the catalog without translating it (translated where shown)."""
    return message


def lazy_gettext(message: str, **variables: Any) -> Any:
    """``gettext`` when the value is used, not when it is defined: for module-level labels
    read in many requests of different languages."""
    return LazyProxy(gettext, message, enable_cache=False, **variables)


def language_name(tag: str | None) -> str:
    """A language tag as a person reads it, in the current language ("pl-PL" in English:
    "Polish (Poland)"); the tag itself when CLDR does not know it, "–" for None."""
    if not tag:
        return "–"
    try:
        name = Locale.parse(tag.replace("-", "_")).get_display_name(current_language())
    except (ValueError, TypeError, UnknownLocaleError):
        return tag
    return name[:1].upper() + name[1:] if name else tag


def money(amount: str, currency: str) -> str:
    """An exact amount (a decimal string) in its currency, as the current language writes
    it: "1520.40", "EUR" -> "€1,520.40" in English, "1520,40 €" in Polish."""
    try:
        # Every decimal kept, as stored: not rounded to the currency's usual digits.
        return str(format_currency(Decimal(amount), currency,
                                   locale=current_language().replace("-", "_"),
                                   currency_digits=False, decimal_quantization=False))
    except (ValueError, TypeError, ArithmeticError, UnknownLocaleError):
        return f"{amount} {currency}"


def template_globals() -> dict[str, Callable[..., Any]]:
    """The names the package's templates call: their own, so no host global is replaced."""
    return {"webpush_gettext": gettext, "webpush_ngettext": ngettext,
            "webpush_language": current_language, "webpush_language_name": language_name,
            "webpush_money": money}
