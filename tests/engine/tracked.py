"""A workflows folder whose news sequence tracks clicks, for the tests of the link rewrite
(tests/engine/delivery/test_links.py) and of the redirect (tests/engine/http/test_clicks.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# One step: the shipped welcome email, whose one web link leads to the site's /start.
NEWS = """\
name: news
track_clicks: true
enrol: {on: {event: form_submitted}}
send: {from: "Acme <hello@acme.test>"}
milestones:
  - id: hello
    steps:
      - email: welcome
"""


def tracked_workflows(folder: Path, variants: str = "", **sequences: str) -> Path:
    """`folder` made a workflows folder: the shipped scoring.yml, the news sequence (its step
    an experiment of `variants`, a YAML flow list, when given) and each of `sequences` as
    `{name}.yml`."""
    folder.mkdir()
    shutil.copy(ROOT / "workflows" / "scoring.yml", folder)
    step = f"        variants: {variants}\n" if variants else ""
    (folder / "news.yml").write_text(NEWS + step)
    for name, text in sequences.items():
        (folder / f"{name}.yml").write_text(text)
    return folder
