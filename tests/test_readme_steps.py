"""README.md's "Add it to an existing Flask app" followed literally: a new Flask-Login +
Flask-SQLAlchemy app on SQLite, the key command run before any key exists, its output
pasted as the README says, the widget rendered and the devices page in the host's layout.

The code the test runs is cut out of the README's own code blocks, so the text cannot rot."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REDIS_URL

from flask_webpush_targeted.transport.b64url import b64url_decode

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Add it to an existing Flask app"

# The host app around the README's step 2: what "Flask-SQLAlchemy and Flask-Login must be
# set up" means in a new app.
HOST_BEFORE = '''
from flask import Flask, render_template
from flask_login import LoginManager, UserMixin, login_required
from flask_sqlalchemy import SQLAlchemy

app = Flask(__name__)
app.config.update(SECRET_KEY="dev", SQLALCHEMY_DATABASE_URI="sqlite:///shop.db")
db = SQLAlchemy(app)
login = LoginManager(app)


class User(UserMixin, db.Model):
    id = db.Column(db.Integer, primary_key=True)
    is_admin = db.Column(db.Boolean, default=False)


@login.user_loader
def load_user(user_id):
    return db.session.get(User, int(user_id))


@app.route("/")
def index():
    return "shop"
'''

HOST_AFTER = '''

@app.route("/account")
@login_required
def account():
    return render_template("account.html")
'''

BASE_TEMPLATE = """<!doctype html>
<nav><a href="{{ url_for('index') }}">Back to the shop</a></nav>
{% block content %}{% endblock %}
"""


def readme_section() -> str:
    """The README's "Add it to an existing Flask app" section."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end != -1 else None]


def code_blocks(section: str, language: str) -> list[str]:
    """The section's fenced code blocks of one language, dedented."""
    blocks = re.findall(r"^( *)```" + language + r"\n(.*?)^\1```", section, re.M | re.S)
    return [textwrap.dedent(body) for _, body in blocks]


def run_flask(folder: Path, command: str) -> subprocess.CompletedProcess[str]:
    """Run a README ``flask ...`` line (without its redirection) in the venv's Python."""
    args = command.split()
    assert args[0] == "flask"
    env = {**os.environ, "FLASK_APP": "shop"}
    env.pop("FLASK_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "flask", *args[1:]], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def load_module(path: Path) -> ModuleType:
    """Import the written app under a name of its own (no clash with other tests)."""
    spec = importlib.util.spec_from_file_location(f"readme_shop_{id(path)}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # registered as an import would, so that Flask(__name__) finds its root_path
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_readme_names_the_install_from_a_checkout_and_the_base_template() -> None:
    section = readme_section()
    shell = "\n".join(code_blocks(section, "sh"))
    assert "pip install /path/to/flask-webpush-targeted" in shell
    assert "pip wheel --no-deps -w dist /path/to/flask-webpush-targeted" in shell
    assert "WEBPUSH_BASE_TEMPLATE" in section and "`content` block" in section


def test_readme_steps_followed_literally_give_a_working_app(tmp_path: Path) -> None:
    section = readme_section()
    init_code, config_code = code_blocks(section, "python")
    (generate,) = [line for block in code_blocks(section, "sh") for line in block.splitlines()
                   if "generate-vapid-keys" in line]
    (widget,) = code_blocks(section, "jinja")
    assert "flask webpush generate-vapid-keys" in section

    # step 2: the app as the README writes it, before any key exists
    (tmp_path / "shop.py").write_text(HOST_BEFORE + "\n" + init_code + HOST_AFTER)
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "base.html").write_text(BASE_TEMPLATE)
    (templates / "account.html").write_text(
        '{% extends "base.html" %}{% block content %}' + widget + "{% endblock %}")

    # step 3: `flask --app shop webpush generate-vapid-keys > webpush.cfg`, keys unset
    command, _, target = generate.partition(">")
    result = run_flask(tmp_path, command)
    assert result.returncode == 0, result.stderr
    assert "WEBPUSH_VAPID_PRIVATE_KEY and WEBPUSH_VAPID_PUBLIC_KEY must be set" in result.stderr
    settings = tmp_path / target.strip()
    assert settings.name == "webpush.cfg" and "from_pyfile(\"webpush.cfg\"" in init_code
    settings.write_text(result.stdout)
    # ... then edited as the README's block shows: its subject, Redis, base template
    wanted = dict(re.findall(r'^(WEBPUSH_\w+) = "([^"]*)"', config_code, re.M))
    assert set(wanted) == {"WEBPUSH_VAPID_PRIVATE_KEY", "WEBPUSH_VAPID_PUBLIC_KEY",
                           "WEBPUSH_VAPID_SUBJECT", "WEBPUSH_SITE_URL", "WEBPUSH_REDIS_URL",
                           "WEBPUSH_BASE_TEMPLATE"}
    printed = dict(re.findall(r'^(WEBPUSH_\w+) = "([^"]*)"', result.stdout, re.M))
    assert set(printed) == {"WEBPUSH_VAPID_PRIVATE_KEY", "WEBPUSH_VAPID_PUBLIC_KEY",
                            "WEBPUSH_VAPID_SUBJECT", "WEBPUSH_SITE_URL"}
    text = result.stdout
    for name in ("WEBPUSH_VAPID_SUBJECT", "WEBPUSH_SITE_URL"):  # the lines the README edits
        text = re.sub(rf'^{name} = .*$', f'{name} = "{wanted[name]}"', text, flags=re.M)
    # the README's Redis URL names database 0; the test uses its own database
    text += f'WEBPUSH_REDIS_URL = "{REDIS_URL}"\n'
    text += f'WEBPUSH_BASE_TEMPLATE = "{wanted["WEBPUSH_BASE_TEMPLATE"]}"\n'
    settings.write_text(text)
    assert len(b64url_decode(printed["WEBPUSH_VAPID_PUBLIC_KEY"])) == 65

    # steps 2 and 4: the app now starts with its keys; db.create_all() makes the tables
    shop = load_module(tmp_path / "shop.py")
    app, db = shop.app, shop.db
    assert app.config["WEBPUSH_VAPID_PUBLIC_KEY"] == printed["WEBPUSH_VAPID_PUBLIC_KEY"]
    assert app.config["WEBPUSH_VAPID_SUBJECT"] == wanted["WEBPUSH_VAPID_SUBJECT"]
    try:
        with app.app_context():
            db.create_all()
            assert {"webpush_subscription", "webpush_consent"} <= set(
                db.inspect(db.engine).get_table_names())
            db.session.add(shop.User(id=1))
            db.session.commit()
        http = app.test_client()
        with http.session_transaction() as session:
            session["_user_id"] = "1"
            session["_fresh"] = True

        # step 5: the widget, and the devices page in the host's layout
        page = http.get("/account")
        assert page.status_code == 200, page.text
        assert printed["WEBPUSH_VAPID_PUBLIC_KEY"] in page.text
        assert 'href="/webpush/devices"' in page.text
        devices = http.get("/webpush/devices")
        assert devices.status_code == 200, devices.text
        assert "Back to the shop" in devices.text and 'href="/"' in devices.text
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.mark.parametrize("key", ["WEBPUSH_VAPID_PRIVATE_KEY", "WEBPUSH_VAPID_PUBLIC_KEY",
                                 "WEBPUSH_VAPID_SUBJECT", "WEBPUSH_REDIS_URL",
                                 "WEBPUSH_BASE_TEMPLATE"])
def test_every_setting_the_readme_names_is_documented(key: str) -> None:
    assert key in readme_section()
    assert f"`{key}`" in (ROOT / "docs" / "config.md").read_text()
