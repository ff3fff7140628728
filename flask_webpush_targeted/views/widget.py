"""The opt-in widget's script texts, translated on the server.

``webpush.js`` says what happens in the customer's words; it takes those words from a JSON
blob the widget's markup carries (``data-webpush-strings``), rendered here in the request's
language. The script keeps the English ones as fallbacks, for a host's own widget template
without the blob. ``%(name)s`` is filled in by the script.
"""

from __future__ import annotations

from ..i18n import lazy_gettext as _l

#: key -> the text the script shows (its English fallback is the same msgid)
WIDGET_STRINGS = {
    "timeout": _l(
        "This browser got no answer from its push service in %(seconds)s seconds. It needs "
        "a connection to the internet (Chrome and Edge use Google's service, Firefox uses "
        "Mozilla's). Check the connection and try again, or try another browser. Nothing "
        "was saved."),
    "not_allowed": _l(
        "This browser does not allow notifications here: in a private window, or when they "
        "are blocked in this site's settings. Use a normal window or allow notifications "
        "for this site, then try again. Nothing was saved."),
    "unreachable": _l(
        "This browser could not reach its push service, which needs a connection to the "
        "internet. Check the connection and try again, or try another browser. Nothing was "
        "saved."),
    "failed": _l("Your browser could not subscribe. Try again, or try another browser. "
                 "Nothing was saved."),
    "worker_failed": _l("the service worker failed to install"),
    "unsupported": _l(
        "This browser cannot receive notifications from this site (it lacks the Push API, "
        "or the page is not served over HTTPS)."),
    "blocked": _l("Notifications are blocked for this site in your browser settings. Allow "
                  "them there, then come back."),
    "already_on": _l("Notifications are already on for this browser."),
    "off": _l("Notifications are off for this browser. Read the text above, tick both boxes "
              "and turn them on."),
    "need_consent": _l("Please tick both boxes first."),
    "asking": _l("Asking your browser for permission…"),
    "denied": _l("Your browser blocked notifications for this site. Nothing was saved."),
    "dismissed": _l("You closed the browser's question without answering. Nothing was "
                    "saved."),
    "subscribing": _l("Subscribing this browser…"),
    "save_failed": _l("The shop could not save this browser: %(reason)s"),
    "done": _l("Done: notifications are on for this browser."),
    "choice_failed": _l("Your choice could not be saved: %(reason)s"),
    "choices_saved": _l("Your choices are saved."),
    "withdraw_failed": _l("Could not withdraw your consent: %(reason)s"),
    "nothing_to_withdraw": _l("You had not given your consent to notifications: there was "
                              "nothing to withdraw."),
    "withdrawn": _l("Your consent is withdrawn: no device of yours receives notifications "
                    "now."),
    "check_failed": _l("Could not check this browser: %(reason)s"),
    # The server's JSON errors are English (clients' code reads them); the widget shows
    # these instead, by the error's code, and the server's message for any other code.
    "error_consent_required": _l(
        "the consent was not given for the current consent text. Reload the page, read the "
        "text and agree again."),
    "error_login_required": _l("you are not logged in any more. Log in and try again."),
    "error_csrf_failed": _l("the page has expired. Reload it and try again."),
    "error_rate_limited": _l("too many attempts. Wait a moment and try again."),
    "error_invalid_subscription": _l("this shop does not accept this browser's push service."),
    "error_bad_request": _l("the shop did not understand the request. Reload the page and "
                            "try again."),
}


def widget_strings() -> dict[str, str]:
    """Every script text in the current request's language."""
    return {key: str(text) for key, text in WIDGET_STRINGS.items()}
