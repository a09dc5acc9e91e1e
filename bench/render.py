"""Render: personalised messages per second through the engine's renderer beside a bare Jinja2
render of the same compiled template. Goal: at least half the bare rate."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import Figure, rate, report
from engine.delivery.confirmation import SAMPLE_CONFIRM_URL
from engine.delivery.rendering import Renderer, sample_context

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def main() -> None:
    """Measure every shipped email and SMS template."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    renderer = Renderer(TEMPLATES)
    # The double opt-in confirmation also names its form and link; the others ignore them.
    form = {"name": "newsletter", "title": "The newsletter", "topic": "newsletter"}
    context = sample_context() | {"form": form, "confirm_url": SAMPLE_CONFIRM_URL}
    figures = []
    for name in sorted(renderer.email_templates()):
        renderer.render_email(name, context)
        bare = renderer._email(name).template  # the same compiled template, rendered bare

        def engine(name: str = name) -> int:
            renderer.render_email(name, context)
            return 1

        def baseline(bare=bare) -> int:  # type: ignore[no-untyped-def]
            bare.render(context)
            return 1

        figures.append(
            Figure(
                f"email {name}",
                rate(engine, seconds=args.seconds),
                rate(baseline, seconds=args.seconds),
                "renders/s",
                ">= 0.5",
            )
        )
    for name in sorted(renderer.sms_templates()):
        template = renderer._sms_template(name)

        def sms(name: str = name) -> int:
            renderer.render_sms(name, context, first_message=True)
            return 1

        def bare_sms(template=template) -> int:  # type: ignore[no-untyped-def]
            template.render(context)
            return 1

        figures.append(
            Figure(
                f"sms {name}",
                rate(sms, seconds=args.seconds),
                rate(bare_sms, seconds=args.seconds),
                "renders/s",
                ">= 0.5",
            )
        )
    report("render", figures)


if __name__ == "__main__":
    main()
