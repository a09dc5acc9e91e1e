"""The example project that ships inside the package, and `nurture init`'s copy of it.

A wheel carries the repository's `workflows/` and `templates/` as `engine/examples/`; a source
checkout reads them where they are. A new project gets them, an `.env.example` with no usable
secret, an `.env` with fresh ones, a `.gitignore` and a short README.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from engine.errors import ConfigurationError
from engine.safety import new_secret

_PACKAGE = Path(__file__).resolve().parent
ENV_FILE = ".env"

ENV_EXAMPLE = """\
# nurture's settings for this project (copy to .env; `nurture init` writes one with fresh secrets).
# `nurture` reads .env from the current folder; variables already set in the environment win.
# Never commit .env. Production processes refuse empty, placeholder or short (<32) secrets.
#
# Signs unsubscribe links (and CRM handoffs when NURTURE_CRM_WEBHOOK_SECRET is unset):
# python -c 'import secrets; print(secrets.token_urlsafe(48))'
NURTURE_SECRET_KEY=
NURTURE_PUBLIC_URL=https://nurture.example.com
# Bearer keys of the HTTP API, comma separated (two at once while rotating), 32+ characters.
NURTURE_API_KEYS=
# NURTURE_DATABASE_URL=postgresql+psycopg://user:password@host:5432/nurture
# NURTURE_REDIS_URL=redis://host:6379/0
# NURTURE_EMAIL_CHANNEL=sendgrid
# SENDGRID_API_KEY=
# SENDGRID_WEBHOOK_PUBLIC_KEY=
# NURTURE_SMS_CHANNEL=twilio
# TWILIO_ACCOUNT_SID=
# TWILIO_AUTH_TOKEN=
# NURTURE_CRM_WEBHOOK_URL=https://crm.example.com/hooks/nurture
# NURTURE_CRM_WEBHOOK_SECRET=
# NURTURE_COMPANY_NAME=Acme Analytics
# NURTURE_SMS_HELP_TEXT=Acme Analytics: reply STOP to opt out. Msg&data rates may apply.
"""

GITIGNORE = """\
.env
*.db
outbox/
demo/
preview/
"""

README = """\
# {name}

A nurture project: lead scoring and nurture sequences in `workflows/`, email and SMS copy in
`templates/`, settings in `.env` (made by `nurture init` with fresh secrets; never commit it).

```sh
nurture validate            # check every workflow and template, with file:line for problems
nurture demo                # 1,000 synthetic leads through 60 simulated days, nothing sent
nurture preview lead-nurture   # every step of a sequence, rendered
nurture run                 # API, scheduler and worker in one process on this machine
nurture plan                # after editing a live sequence: what `nurture apply` would move
```

Edit `workflows/lead-nurture.yml` to make the drip your own; `nurture validate` names the file,
line and field of every problem.
"""


@dataclass(frozen=True)
class Examples:
    """Where the example workflows and templates are: inside the package, or in the checkout."""

    workflows: Path
    templates: Path


def examples() -> Examples:
    """The bundled examples; ConfigurationError when this installation carries none."""
    for root in (_PACKAGE / "examples", _PACKAGE.parent):
        if (root / "workflows" / "scoring.yml").is_file() and (root / "templates").is_dir():
            return Examples(root / "workflows", root / "templates")
    raise ConfigurationError("this installation of nurture carries no example workflows")


@dataclass(frozen=True)
class Scaffold:
    """What `nurture init` wrote, and what it found and left as it was."""

    written: list[Path]
    kept: list[Path]


def _files(source: Path) -> list[Path]:
    """The example files below `source`, relative to it: YAML and Jinja2 templates only."""
    return sorted(
        path.relative_to(source)
        for path in source.rglob("*")
        if path.is_file() and path.suffix in (".yml", ".yaml", ".j2")
    )


def scaffold(workflows: Path, templates: Path, root: Path, *, force: bool = False) -> Scaffold:
    """Copy the examples into a missing workflows or templates folder, and write the project's
    README, .gitignore and .env.example where they are missing.

    An existing folder is kept as it is, unless `force`: then the example files are written
    over the files of the same name in it. The README, .gitignore and .env.example are never
    replaced (they are the project's own once there); nor is `.env` (see `write_env`).
    """
    source = examples()
    written: list[Path] = []
    kept: list[Path] = []
    for origin, target in ((source.workflows, workflows), (source.templates, templates)):
        if target.exists() and not force:
            kept.append(target)
            continue
        for name in _files(origin):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin / name, target / name)
            written.append(target / name)
    texts = {
        root / ".env.example": ENV_EXAMPLE,
        root / ".gitignore": GITIGNORE,
        root / "README.md": README.format(name=root.resolve().name),
    }
    for path, text in texts.items():
        if path.exists():
            kept.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return Scaffold(written, kept)


def write_env(root: Path) -> Path | None:
    """Write `root/.env` with secrets made for this project alone, unless one exists.

    An existing one is kept whatever is asked: its secret signs links already sent.
    """
    env = root / ENV_FILE
    if env.exists():
        return None
    root.mkdir(parents=True, exist_ok=True)
    env.touch(mode=0o600)
    env.write_text(
        f"# Written by `nurture init` on {date.today().isoformat()}: this project's own secrets.\n"
        "# Never commit this file. Add provider keys as .env.example shows.\n"
        f"NURTURE_SECRET_KEY={new_secret()}\n"
        f"NURTURE_API_KEYS={new_secret()}\n",
        encoding="utf-8",
    )
    return env
