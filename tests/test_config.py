"""init_app: configuration checks with errors that say how to fix them, defaults, the
blueprint switch, the VAPID key command, and the models on the host's metadata."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import VAPID_PRIVATE, VAPID_PUBLIC, LoggedInClient, make_host_app, make_subscription
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase

from flask_webpush_targeted import ConfigurationError, WebPush
from flask_webpush_targeted.config import DEFAULTS
from flask_webpush_targeted.models import endpoint_hash
from flask_webpush_targeted.transport.b64url import b64url_decode, b64url_encode
from flask_webpush_targeted.transport.vapid import generate_vapid_keys, load_vapid_private_key

HINT = "flask webpush generate-vapid-keys"
OTHER_PRIVATE, OTHER_PUBLIC = generate_vapid_keys()
MEMORY_DB = "sqlite://"


def public_of(key: ec.EllipticCurvePrivateKey, fmt: Any) -> str:
    return b64url_encode(key.public_key().public_bytes(serialization.Encoding.X962, fmt))


def bare_app(**config: Any) -> tuple[Flask, SQLAlchemy]:
    """A Flask app with a db and only the given config (no WEBPUSH_* set otherwise)."""

    class Base(DeclarativeBase):
        pass

    app = Flask(__name__)
    app.config.update(SECRET_KEY="x", SQLALCHEMY_DATABASE_URI=MEMORY_DB, **config)
    db = SQLAlchemy(model_class=Base)
    db.init_app(app)
    return app, db


# -- errors that say how to fix them -------------------------------------------------------

CONFIG_ERRORS: list[Any] = [
    pytest.param({"WEBPUSH_VAPID_PRIVATE_KEY": None}, [HINT], id="private-missing"),
    pytest.param({"WEBPUSH_VAPID_PUBLIC_KEY": None}, [HINT], id="public-missing"),
    pytest.param({"WEBPUSH_VAPID_PRIVATE_KEY": ""}, [HINT], id="private-empty"),
    pytest.param({"WEBPUSH_VAPID_PRIVATE_KEY": b64url_encode(b"\x01" * 31)}, ["32 bytes", HINT],
                 id="private-31-bytes"),
    pytest.param({"WEBPUSH_VAPID_PRIVATE_KEY": b64url_encode(b"\x01" * 33)}, ["32 bytes", HINT],
                 id="private-33-bytes"),
    pytest.param({"WEBPUSH_VAPID_PRIVATE_KEY": "not base64url!"}, [HINT], id="private-not-b64"),
    pytest.param({"WEBPUSH_VAPID_PRIVATE_KEY": b64url_encode(bytes(32))}, [HINT],
                 id="private-zero-scalar"),
    pytest.param({"WEBPUSH_VAPID_PUBLIC_KEY": OTHER_PUBLIC}, ["does not match", HINT],
                 id="public-of-another-key"),
    pytest.param({"WEBPUSH_VAPID_PUBLIC_KEY": "***"}, ["base64url", HINT], id="public-not-b64"),
    pytest.param({"WEBPUSH_VAPID_PUBLIC_KEY": b64url_encode(b64url_decode(VAPID_PUBLIC)[1:])},
                 ["65-byte uncompressed point", HINT], id="public-without-04-prefix"),
    pytest.param({"WEBPUSH_VAPID_PRIVATE_KEY": VAPID_PUBLIC}, [HINT],
                 id="public-key-given-as-private"),
    *[pytest.param({"WEBPUSH_VAPID_SUBJECT": subject}, ["mailto:", "https:", "e.g."],
                   id=f"subject-{name}")
      for name, subject in [("missing", None), ("bare-email", "ops@shop.example"),
                            ("mailto-without-address", "mailto:ops"),
                            ("http", "http://shop.example/contact"), ("https-empty", "https://"),
                            ("not-a-string", 42)]],
    *[pytest.param({"WEBPUSH_DEFAULT_TTL": ttl}, ["WEBPUSH_DEFAULT_TTL", "2419200 (28 days)"],
                   id=f"ttl-{name}")
      for name, ttl in [("zero", 0), ("negative", -5), ("over-28-days", 28 * 86400 + 1),
                        ("string", "3600"), ("float", 3600.0), ("bool", True), ("none", None)]],
    pytest.param({"WEBPUSH_EXTRA_PUSH_SERVICES": "http://127.0.0.1:8765"},
                 ["must be a list", "e.g. ['http://127.0.0.1:8765']"], id="extra-a-string"),
    pytest.param({"WEBPUSH_EXTRA_PUSH_SERVICES": None}, ["must be a list"], id="extra-none"),
    *[pytest.param({"WEBPUSH_EXTRA_PUSH_SERVICES": [entry]},
                   ["is not an origin", "scheme://host[:port], nothing after it"],
                   id=f"extra-{name}")
      for name, entry in [("with-path", "http://127.0.0.1:8765/push"),
                          ("with-query", "http://127.0.0.1:8765?x=1"),
                          ("with-userinfo", "http://user@127.0.0.1:8765"),
                          ("no-scheme", "127.0.0.1:8765"), ("ftp", "ftp://127.0.0.1:8765"),
                          ("not-a-string", 8765)]],
    *[pytest.param({"WEBPUSH_URL_PREFIX": prefix}, ["WEBPUSH_URL_PREFIX", "must start with '/'"],
                   id=f"prefix-{name}")
      for name, prefix in [("no-slash", "webpush"), ("trailing-slash", "/webpush/"),
                           ("root", "/"), ("empty", ""), ("none", None)]],
    pytest.param({"WEBPUSH_CONSENT_VERSION": " "}, ["WEBPUSH_CONSENT_VERSION", "non-empty"],
                 id="consent-version-blank"),
    pytest.param({"WEBPUSH_CONSENT_TEXT": ""}, ["WEBPUSH_CONSENT_TEXT", "non-empty"],
                 id="consent-text-empty"),
]


@pytest.mark.parametrize(("config", "says"), CONFIG_ERRORS)
def test_invalid_setting_fails_init_app_with_a_message_saying_how_to_fix_it(
        config: dict[str, Any], says: list[str]) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_host_app(MEMORY_DB, **config)
    for text in says:
        assert text in str(info.value)


MISSING_KEYS = "WEBPUSH_VAPID_PRIVATE_KEY and WEBPUSH_VAPID_PUBLIC_KEY must be set"


def test_vapid_keys_never_set_leave_the_cli_working_and_every_other_use_failing() -> None:
    # Both keys unset is a new app: init_app succeeds so `flask webpush generate-vapid-keys`
    # can run, and everything else raises the error naming that command (docs/config.md).
    app, db = bare_app(TESTING=True)
    webpush = WebPush(app, db=db)
    assert app.extensions["webpush"] is webpush
    runner = app.test_cli_runner()
    result = runner.invoke(args=["webpush", "generate-vapid-keys"])
    assert result.exit_code == 0, result.output
    assert "WEBPUSH_VAPID_PRIVATE_KEY = " in result.output
    for args in (["webpush", "worker", "--burst"], ["webpush", "recover"],
                 ["webpush", "send", "--user", "1", "--title", "Hello"]):
        refused = runner.invoke(args=args)
        assert refused.exit_code == 1, (args, refused.output)
        assert MISSING_KEYS in refused.output and HINT in refused.output
    http = app.test_client()
    for url in ("/webpush/sw.js", "/webpush/vapid-public-key", "/webpush/devices",
                "/webpush/static/webpush/webpush.js"):
        with pytest.raises(ConfigurationError, match=re.escape(HINT)):
            http.get(url)
    with app.test_request_context("/"):
        with pytest.raises(ConfigurationError, match=re.escape(HINT)):
            app.jinja_env.from_string("{{ webpush_optin() }}").render()
        with pytest.raises(ConfigurationError, match=re.escape(HINT)):
            webpush.notify_user("1", title="Hello")
        with pytest.raises(ConfigurationError, match=re.escape(HINT)):
            webpush.recover()


def test_vapid_keys_never_set_still_check_the_other_settings() -> None:
    app, db = bare_app(WEBPUSH_URL_PREFIX="webpush")
    with pytest.raises(ConfigurationError, match="must start with '/'"):
        WebPush(app, db=db)
    assert "webpush" not in app.extensions


@pytest.mark.parametrize("ttl", [1, 28 * 86400])
def test_default_ttl_bounds_are_accepted(ttl: int) -> None:
    app, _, _ = make_host_app(MEMORY_DB, WEBPUSH_DEFAULT_TTL=ttl)
    assert app.config["WEBPUSH_DEFAULT_TTL"] == ttl


def test_vapid_private_key_may_be_a_pem_file_path(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "vapid.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    public = public_of(key, serialization.PublicFormat.UncompressedPoint)
    app, _, _ = make_host_app(MEMORY_DB, WEBPUSH_VAPID_PRIVATE_KEY=str(pem),
                              WEBPUSH_VAPID_PUBLIC_KEY=public)
    assert app.extensions["webpush"]
    loaded = load_vapid_private_key(str(pem))
    assert loaded.private_numbers().private_value == key.private_numbers().private_value
    # the same PEM with another key's public half is refused
    with pytest.raises(ConfigurationError, match="does not match"):
        make_host_app(MEMORY_DB, WEBPUSH_VAPID_PRIVATE_KEY=str(pem),
                      WEBPUSH_VAPID_PUBLIC_KEY=VAPID_PUBLIC)


@pytest.mark.parametrize("kind", ["p384", "encrypted", "garbage"])
def test_pem_file_without_a_usable_p256_key_is_refused(tmp_path: Path, kind: str) -> None:
    pem = tmp_path / "vapid.pem"
    if kind == "p384":
        key = ec.generate_private_key(ec.SECP384R1())
        pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    elif kind == "encrypted":
        key = ec.generate_private_key(ec.SECP256R1())
        pem.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret")))
    else:
        pem.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigurationError, match=re.escape(HINT)):
        make_host_app(MEMORY_DB, WEBPUSH_VAPID_PRIVATE_KEY=str(pem),
                      WEBPUSH_VAPID_PUBLIC_KEY=VAPID_PUBLIC)


def test_registering_twice_on_one_app_raises_runtime_error() -> None:
    app, db, webpush = make_host_app(MEMORY_DB)
    with pytest.raises(RuntimeError, match="already registered"):
        webpush.init_app(app, db=db)
    with pytest.raises(RuntimeError, match="already registered"):
        WebPush(app, db=db)
    assert app.extensions["webpush"] is webpush


def test_init_app_without_db_raises_configuration_error_naming_the_fix() -> None:
    config = {"WEBPUSH_VAPID_PRIVATE_KEY": VAPID_PRIVATE, "WEBPUSH_VAPID_PUBLIC_KEY": VAPID_PUBLIC,
              "WEBPUSH_VAPID_SUBJECT": "mailto:ops@shop.example"}
    app, _ = bare_app(**config)
    with pytest.raises(ConfigurationError, match=re.escape("init_app(app, db=db)")):
        WebPush(app)
    with pytest.raises(ConfigurationError, match=re.escape("init_app(app, db=db)")):
        WebPush().init_app(app)
    assert "webpush" not in app.extensions


# -- defaults ------------------------------------------------------------------------------


def test_defaults_fill_unset_keys_and_never_override_the_hosts_values() -> None:
    host_values = {"WEBPUSH_QUEUE": "shop-push", "WEBPUSH_CONSENT_VERSION": "2024-06",
                   "WEBPUSH_DEFAULT_TTL": 600, "WEBPUSH_CSRF_ENABLED": False,
                   "WEBPUSH_MAX_REQUEST_BYTES": 2000, "WEBPUSH_SW_SCOPE": "/webpush/shop/",
                   "WEBPUSH_CONSENT_TEXT": "Our own words."}
    app, _, _ = make_host_app(MEMORY_DB, **host_values)
    for key, value in host_values.items():
        assert app.config[key] == value, key
    assert app.config["WEBPUSH_URL_PREFIX"] == "/webpush"
    assert app.config["WEBPUSH_UNBIND_ON_LOGOUT"] is False
    assert app.config["WEBPUSH_REGISTER_BLUEPRINT"] is True
    assert app.config["WEBPUSH_EXTRA_PUSH_SERVICES"] == []
    other, _, _ = make_host_app(MEMORY_DB)
    assert other.config["WEBPUSH_DEFAULT_TTL"] == DEFAULTS["WEBPUSH_DEFAULT_TTL"] > 0
    assert other.config["WEBPUSH_SW_SCOPE"] == "/webpush/"
    assert other.config["WEBPUSH_CSRF_ENABLED"] is True
    # the mutable default is not shared between apps or with DEFAULTS
    app.config["WEBPUSH_EXTRA_PUSH_SERVICES"].append("http://127.0.0.1:1")
    assert other.config["WEBPUSH_EXTRA_PUSH_SERVICES"] == []
    assert DEFAULTS["WEBPUSH_EXTRA_PUSH_SERVICES"] == []


def test_register_blueprint_false_registers_no_routes() -> None:
    app, _, _ = make_host_app(MEMORY_DB, WEBPUSH_REGISTER_BLUEPRINT=False)
    assert not [r for r in app.url_map.iter_rules() if r.endpoint.startswith("webpush.")]
    assert "webpush" not in app.blueprints
    http = app.test_client()
    for url in ("/webpush/sw.js", "/webpush/vapid-public-key", "/webpush/devices"):
        assert http.get(url).status_code == 404
    assert "webpush" in app.cli.commands  # the CLI is still there


def test_url_prefix_moves_every_route_and_the_service_worker_scope() -> None:
    app, _, _ = make_host_app(MEMORY_DB, WEBPUSH_URL_PREFIX="/shop/push")
    http = app.test_client()
    resp = http.get("/shop/push/sw.js")
    assert resp.status_code == 200
    assert resp.headers["Service-Worker-Allowed"] == "/shop/push/"
    assert http.get("/shop/push/vapid-public-key").get_json() == {"public_key": VAPID_PUBLIC}
    assert http.get("/webpush/sw.js").status_code == 404


# -- the VAPID key command -----------------------------------------------------------------


def test_generate_vapid_keys_output_configures_a_working_app(
        db_url: str, tmp_path: Path) -> None:
    app, _, _ = make_host_app(MEMORY_DB)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["webpush", "generate-vapid-keys"])
    assert result.exit_code == 0, result.output
    again = runner.invoke(args=["webpush", "generate-vapid-keys"]).output
    assert again != result.output  # a new pair each time
    parsed = dict(re.findall(r'^(WEBPUSH_VAPID_\w+) = "([^"]*)"', result.output, re.M))
    assert set(parsed) == {"WEBPUSH_VAPID_PRIVATE_KEY", "WEBPUSH_VAPID_PUBLIC_KEY",
                           "WEBPUSH_VAPID_SUBJECT"}
    assert len(b64url_decode(parsed["WEBPUSH_VAPID_PRIVATE_KEY"])) == 32
    assert len(b64url_decode(parsed["WEBPUSH_VAPID_PUBLIC_KEY"])) == 65

    # pasted as is into a config file, it configures a host that works end to end
    config_file = tmp_path / "settings.py"
    config_file.write_text(result.output)
    host, db, webpush = make_host_app(db_url)
    assert host.config.from_pyfile(str(config_file))
    host2, db2, _ = make_host_app(db_url, **{k: host.config[k] for k in parsed})
    try:
        with host2.app_context():
            db2.create_all()
        assert host2.config["WEBPUSH_VAPID_PUBLIC_KEY"] == parsed["WEBPUSH_VAPID_PUBLIC_KEY"]
        assert host2.test_client().get("/webpush/vapid-public-key").get_json() == {
            "public_key": parsed["WEBPUSH_VAPID_PUBLIC_KEY"]}
        assert LoggedInClient(host2, "1").subscribe(make_subscription()).status_code == 201
    finally:
        with host2.app_context():
            db2.session.remove()
            db2.drop_all()
            db2.engine.dispose()

    # and the two halves really are one key pair: sign with one, verify with the other
    private = load_vapid_private_key(parsed["WEBPUSH_VAPID_PRIVATE_KEY"])
    public = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), b64url_decode(parsed["WEBPUSH_VAPID_PUBLIC_KEY"]))
    signature = private.sign(b"vapid", ec.ECDSA(hashes.SHA256()))
    public.verify(signature, b"vapid", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public.verify(signature, b"other", ec.ECDSA(hashes.SHA256()))


# -- models on the host's metadata, with their unique constraints ---------------------------

TABLES = {"webpush_subscription", "webpush_consent", "webpush_notification", "webpush_delivery"}


def test_models_are_tables_of_the_hosts_metadata(
        app: Flask, db: SQLAlchemy, webpush: WebPush) -> None:
    assert set(db.metadata.tables) >= TABLES
    m = webpush.models
    for model in (m.Subscription, m.Consent, m.Notification, m.Delivery):
        assert model.__table__ is db.metadata.tables[model.__tablename__]
        assert issubclass(model, db.Model)
    with app.app_context():
        assert set(sa.inspect(db.engine).get_table_names()) >= TABLES


def _subscription(m: Any, user_id: str, endpoint: str) -> Any:
    sub = m.Subscription(user_id=user_id, p256dh="p", auth="a", consent_version="1")
    sub.set_endpoint(endpoint)
    return sub


def _notification(m: Any, key: str | None = None) -> Any:
    return m.Notification(payload={"title": "t"}, targeting={"user_ids": ["1"]}, ttl=60,
                          idempotency_key=key)


def _dup_subscription(db: SQLAlchemy, m: Any) -> Callable[[], Any]:
    db.session.add(_subscription(m, "1", "https://fcm.googleapis.com/fcm/send/same"))
    db.session.commit()
    return lambda: _subscription(m, "2", "https://fcm.googleapis.com/fcm/send/same")


def _dup_delivery(db: SQLAlchemy, m: Any) -> Callable[[], Any]:
    sub, n = _subscription(m, "1", "https://fcm.googleapis.com/fcm/send/x"), _notification(m)
    db.session.add_all([sub, n])
    db.session.flush()
    ids = {"notification_id": n.id, "subscription_id": sub.id, "user_id": "1"}
    db.session.add(m.Delivery(**ids))
    db.session.commit()
    return lambda: m.Delivery(**ids)


def _dup_idempotency_key(db: SQLAlchemy, m: Any) -> Callable[[], Any]:
    # NULL keys do not collide: notifications without a key are many
    db.session.add_all([_notification(m), _notification(m), _notification(m, "order-42")])
    db.session.commit()
    return lambda: _notification(m, "order-42")


@pytest.mark.parametrize("setup", [_dup_subscription, _dup_delivery, _dup_idempotency_key],
                         ids=["endpoint_sha256", "notification+subscription", "idempotency_key"])
def test_unique_constraint_rejects_a_duplicate_row(
        app: Flask, db: SQLAlchemy, webpush: WebPush, setup: Callable[..., Any]) -> None:
    with app.app_context():
        make_duplicate = setup(db, webpush.models)
        db.session.add(make_duplicate())
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()


def test_endpoint_sha256_is_the_hash_of_the_endpoint(app: Flask, webpush: WebPush) -> None:
    endpoint = "https://fcm.googleapis.com/fcm/send/abc"
    sub = _subscription(webpush.models, "1", endpoint)
    assert sub.endpoint_sha256 == endpoint_hash(endpoint)
    assert len(sub.endpoint_sha256) == 64
    assert endpoint_hash(endpoint + "x") != sub.endpoint_sha256
