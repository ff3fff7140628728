"""The shop's pages: products, login, the account page with the opt-in widget."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_required, login_user, logout_user
from werkzeug.security import check_password_hash

from flask_webpush_targeted.csrf import check_csrf
from flask_webpush_targeted.exceptions import CSRFError

from . import db, webpush
from .models import Customer, Order, Product

bp = Blueprint("shop", __name__)

#: what a browser would drop from a URL or read as "/" (tab, newline, other controls,
#: space, backslash): "/\t/evil.example" and "/\\evil.example" both lead off-site
_URL_TRICKS = re.compile(r"[\x00-\x20\x7f\\]")


def is_local_path(target: str) -> bool:
    """Whether ``target`` is a path on this site, safe to redirect to after login.

    Only local paths are followed: an open redirect would be a phishing aid. A path is
    "/" then anything but a second "/" (``//host`` is another site), with none of the
    characters browsers strip or rewrite, and no scheme or host once parsed.
    """
    if not target.startswith("/") or target.startswith("//") or _URL_TRICKS.search(target):
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc


@bp.route("/")
def index() -> ResponseReturnValue:
    products = db.session.scalars(sa.select(Product).order_by(Product.id)).all()
    return render_template("index.html", products=products)


@bp.route("/products/<int:product_id>")
def product(product_id: int) -> ResponseReturnValue:
    item = db.session.get(Product, product_id) or abort(404)
    return render_template("product.html", product=item)


def buy(product_id: int) -> ResponseReturnValue:
    """Order a product (the demo's checkout): the order is reported to the push it followed."""
    try:
        check_csrf()
    except CSRFError:
        abort(400, "The form expired; reload the page.")
    item = db.session.get(Product, product_id) or abort(404)
    order = Order(customer_id=int(current_user.get_id()), product_id=item.id,
                  ordered_on=date.today())
    db.session.add(order)
    db.session.commit()
    # Attributed to the push the customer clicked (or saw) before: its page in the
    # back-office shows the order and its revenue.
    attributed = webpush.record_conversion(
        current_user, value=Decimal(item.price_cents).scaleb(-2), currency="PLN",
        order_id=f"shop-{order.id}")
    return render_template("ordered.html", product=item, order=order, attributed=attributed)


# Wrapped by a call, as account below: Flask-Login's decorator would untype the view.
bp.add_url_rule("/products/<int:product_id>/buy", view_func=login_required(buy),
                methods=["POST"])


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    error = None
    if request.method == "POST":
        try:
            check_csrf()
        except CSRFError:
            abort(400, "The login form expired; reload it.")
        email = request.form.get("email", "").strip().lower()
        user = db.session.scalar(sa.select(Customer).where(Customer.email == email))
        if user and check_password_hash(user.password_hash, request.form.get("password", "")):
            login_user(user)
            target = request.args.get("next", "")
            if not is_local_path(target):
                target = url_for("shop.account")
            return redirect(target)
        error = "Wrong email or password."
    return render_template("login.html", error=error)


@bp.route("/logout", methods=["POST"])
def logout() -> ResponseReturnValue:
    try:
        check_csrf()
    except CSRFError:
        abort(400, "The form expired; reload the page.")
    logout_user()
    return redirect(url_for("shop.index"))


def account() -> ResponseReturnValue:
    """The customer's account page."""
    return render_template("account.html")


# Wrapped by a call: Flask-Login is untyped, so as a decorator it would untype the view.
bp.add_url_rule("/account", view_func=login_required(account))
