"""What shop staff read: one vocabulary in the back-office and the statistics pages, staff
messages instead of the library's, no silently cut text, pages that follow a send."""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from test_example_backoffice import ADMIN, ALICE, client_of, ids_by_email, notifications, send_form
from test_example_backoffice import make_shop as make_shop  # noqa: F401 (the fixture)
from test_example_backoffice import shop as shop_fixture

from example_app import db, webpush
from example_app.backoffice import STAFF_MESSAGES, staff_message
from flask_webpush_targeted.exceptions import InvalidNotification, PayloadTooLarge
from flask_webpush_targeted.views.admin import FIGURE_LABELS, duration_words

shop = shop_fixture  # the example shop, as the back-office tests build it

#: What the library says, for developers: none of it may reach the form.
DEVELOPER_WORDS = ("WEBPUSH_SITE_URL", "URL-safe base64", "bytes with its tracking token",
                   "send_at_local must", "must be a non-empty string")


def sent(shop: Flask, **change: Any) -> tuple[Any, int]:
    """An admin client and the id of a notification it sent to Carol from the form."""
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids_by_email(shop)["carol@example.com"]]} | change
    response = admin.post("/admin/send", data=data)
    assert response.status_code == 303
    return admin, int(response.location.rsplit("/", 1)[1])


def set_status(shop: Flask, nid: int, status: str) -> None:
    with shop.app_context():
        N = webpush.models.Notification
        db.session.execute(sa.update(N).where(N.id == nid).values(status=status))
        db.session.commit()


@pytest.mark.parametrize(("seconds", "words"), [
    (86400, "1 day"), (7200, "2 hours"), (1800, "30 minutes"), (3600, "1 hour"),
    (7 * 86400, "1 week"), (3 * 86400, "3 days"), (90, "90 seconds"), (1, "1 second"),
    (0, "0 seconds"), (86401, "86401 seconds"),
])
def test_a_validity_period_is_said_in_whole_units_seconds_only_when_not_whole(
        seconds: int, words: str) -> None:
    assert duration_words(seconds) == words


def test_the_back_office_and_the_statistics_pages_use_the_same_words(shop: Flask) -> None:
    admin, nid = sent(shop, ttl="86400")
    backoffice = admin.get(f"/admin/notifications/{nid}").get_data(as_text=True)
    statistics = admin.get(f"/webpush/admin/notifications/{nid}").get_data(as_text=True)

    for key in ("targeted_users", "users_without_devices", "deliveries", "pending", "sent",
                "failed", "gone", "expired", "skipped", "displayed", "clicked", "closed"):
        assert f"<th>{FIGURE_LABELS[key]}</th>" in backoffice, key
        assert f"<dt>{FIGURE_LABELS[key]}</dt>" in statistics, key
    assert 'data-field="ttl">1 day<' in backoffice
    assert 'data-validity="86400">1 day<' in statistics
    for page in (backoffice, statistics):
        assert "Targeted users" not in page and "86400 s" not in page
        assert page.count("Skipped (") == 1


def test_the_navigation_links_the_statistics_pages_for_admins_only(shop: Flask) -> None:
    home = client_of(shop, ADMIN).get("/").get_data(as_text=True)
    assert '<a href="/webpush/admin/">Statistics</a>' in home
    assert client_of(shop, ADMIN).get("/webpush/admin/").status_code == 302  # to the list
    for account in (ALICE, None):
        assert "/webpush/admin/" not in client_of(shop, account).get("/").get_data(as_text=True)


@pytest.mark.parametrize(("change", "staff"), [
    ({"url": "https://evil.example/login"}, STAFF_MESSAGES["url"]),
    ({"url": "/a b"}, STAFF_MESSAGES["url"]),
    ({"topic": "bad topic!"}, STAFF_MESSAGES["topic"]),
    ({"topic": "t" * 33}, STAFF_MESSAGES["topic"]),
    ({"when": "local", "send_at_local": "25:00"}, STAFF_MESSAGES["send_at_local"]),
    ({"title": "   "}, STAFF_MESSAGES["title"]),
    ({"title": "Sale\x00"}, "The title contains a character that cannot be sent"),
    ({"body": "é" * 2500}, "The message is too long by about"),
])
def test_a_refusal_tells_staff_what_to_change_not_the_developer_message(
        shop: Flask, change: dict[str, Any], staff: str) -> None:
    admin = client_of(shop, ADMIN)
    data = send_form(admin) | {"user": [ids_by_email(shop)["carol@example.com"]]} | change
    response = admin.post("/admin/send", data=data)

    assert response.status_code == 400
    html = response.get_data(as_text=True).replace("&#39;", "'")
    error = re.search(r'<p class="error" role="alert">([^<]*)</p>', html)
    assert error and staff in error.group(1)
    assert not any(words in error.group(1) for words in DEVELOPER_WORDS)
    assert notifications(shop) == []


def test_too_long_says_by_how_much_and_an_unknown_refusal_keeps_the_librarys_words() -> None:
    too_long = PayloadTooLarge("The payload is 4600 bytes with its tracking token; Web Push "
                               "allows 3993. Shorten the body or data.")
    assert staff_message(too_long) == ("The message is too long by about 607 characters: "
                                       "shorten the title or the text.")
    # Counted in the characters typed: an accented letter is two bytes.
    assert "by about 304 characters" in staff_message(too_long, "é" * 2300)
    assert staff_message(InvalidNotification("No user to notify.")) == "No user to notify."
    assert staff_message(InvalidNotification("")) == ""


def test_long_text_is_not_cut_by_the_form_and_the_limit_is_shown(shop: Flask) -> None:
    admin = client_of(shop, ADMIN)
    form = admin.get("/admin/send").get_data(as_text=True)
    assert "maxlength" not in form
    assert 'id="text-limit"' in form and "up to about 3600 characters" in form

    body = "Ships tomorrow. " * 120  # 1,920 characters: the old maxlength was 1,000
    _admin, nid = sent(shop, title="T" * 300, body=body, topic="")
    with shop.app_context():
        n = db.session.get(webpush.models.Notification, nid)
        assert n is not None
        assert n.payload["body"] == body.strip() and n.payload["title"] == "T" * 300


@pytest.mark.parametrize("status", ["queued", "sending"])
def test_an_open_notification_page_follows_its_figures(shop: Flask, status: str) -> None:
    admin, nid = sent(shop)
    set_status(shop, nid, status)
    figures = f"/webpush/admin/notifications/{nid}.json"
    for path in (f"/admin/notifications/{nid}", f"/webpush/admin/notifications/{nid}"):
        html = admin.get(path).get_data(as_text=True)
        assert "data-live" in html and f'"{figures}"' in html, path
        assert "window.setTimeout(tick, 3000)" in html
    answer = admin.get(figures)
    assert answer.status_code == 200 and answer.get_json()["stats"]["status"] == status


@pytest.mark.parametrize("status", ["done", "cancelled", "scheduled"])
def test_a_finished_or_scheduled_notification_page_does_not_poll(
        shop: Flask, status: str) -> None:
    admin, nid = sent(shop)
    set_status(shop, nid, status)
    for path in (f"/admin/notifications/{nid}", f"/webpush/admin/notifications/{nid}"):
        html = admin.get(path).get_data(as_text=True)
        assert "data-live" not in html and "setTimeout(tick" not in html, path


def test_the_shop_page_says_automatic_topic_and_does_not_count_devices_before_fan_out(
        shop: Flask) -> None:
    """Before the fan-out, who has no device is not known: the funnel says so, not 0; the
    topic the extension gave is called automatic, as on the statistics pages."""
    import re

    admin, nid = sent(shop)  # no worker runs here: it is not fanned out
    html = admin.get(f"/admin/notifications/{nid}").get_data(as_text=True)
    row = re.search(r'<tr data-stat="users_without_devices"><th>[^<]*</th><td>([^<]*)</td>',
                    html)
    assert row is not None and row.group(1) == "—"
    assert "<th>Topic</th><td>automatic</td>" in html
