"""The shop's own tables: customers, products, orders (a CRM stand-in)."""

from __future__ import annotations

from datetime import date
from functools import cache

import sqlalchemy as sa
from flask_login import UserMixin
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import generate_password_hash

from . import db, login_manager

#: The demo accounts (also listed in the README): email, name, password, admin.
DEMO_USERS = [
    ("alice@example.com", "Alice Kowalska", "alice-pass", False),
    ("bob@example.com", "Bob Nowak", "bob-pass", False),
    ("carol@example.com", "Carol Wiśniewska", "carol-pass", False),
    ("admin@example.com", "Shop Admin", "admin-pass", True),
]

DEMO_PRODUCTS = [
    ("Trail running shoes", 349_00),
    ("Rain jacket", 499_00),
    ("Flight Warsaw-Lisbon, 12 Dec", 899_00),
]


# db.Model is no type to mypy (name-defined) and, like Flask-Login's UserMixin, untyped:
# --strict refuses the subclass (misc), which the default settings do not (unused-ignore).
class Customer(UserMixin, db.Model):  # type: ignore[name-defined, misc, unused-ignore]
    __tablename__ = "customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(200), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    password_hash: Mapped[str] = mapped_column(sa.String(300))
    is_admin: Mapped[bool] = mapped_column(default=False)


class Product(db.Model):  # type: ignore[name-defined, misc, unused-ignore]
    __tablename__ = "product"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    price_cents: Mapped[int] = mapped_column()


class Order(db.Model):  # type: ignore[name-defined, misc, unused-ignore]
    __tablename__ = "shop_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(sa.ForeignKey("customer.id"))
    product_id: Mapped[int] = mapped_column(sa.ForeignKey("product.id"))
    ordered_on: Mapped[date] = mapped_column()


def load_user(user_id: str) -> Customer | None:
    """The customer of a session's user id, for Flask-Login."""
    return db.session.get(Customer, int(user_id)) if user_id.isdigit() else None


# Called rather than used as a decorator: Flask-Login is untyped, and a decorated function
# would lose its signature for mypy.
login_manager.user_loader(load_user)


@cache
def _hash(password: str) -> str:
    # scrypt is slow on purpose; the demo re-seeds often in tests, so hash once per process.
    return generate_password_hash(password)


def seed() -> None:
    """Insert the demo customers, products and orders once."""
    if db.session.scalar(sa.select(sa.func.count()).select_from(Customer)):
        return
    customers = [Customer(email=e, name=n, password_hash=_hash(p), is_admin=a)
                 for e, n, p, a in DEMO_USERS]
    products = [Product(name=n, price_cents=c) for n, c in DEMO_PRODUCTS]
    db.session.add_all(customers + products)
    db.session.flush()
    orders = [(0, 0, date(2026, 11, 2)), (0, 2, date(2026, 11, 20)),
              (1, 2, date(2026, 11, 21)), (2, 1, date(2026, 11, 5))]
    db.session.add_all([Order(customer_id=customers[c].id, product_id=products[p].id,
                              ordered_on=day) for c, p, day in orders])
    db.session.commit()
