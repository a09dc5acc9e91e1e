"""Hostile input: garbled workflows, junk lead records through the API and the Python API,
injection through lead fields into a real send, forged tokens and oversized webhook bodies.
Whatever comes in, the answer is a clean refusal (a WorkflowError naming file, line and field;
a NurtureError; a 4xx) or a correct result, never another exception or a 500."""

from __future__ import annotations

import email
import email.policy
import json
import shutil
import string
import tempfile
import uuid
from collections.abc import Iterator
from email.utils import getaddresses
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from twilio.request_validator import RequestValidator
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.representer import SafeRepresenter

from engine.app import App
from engine.clock import FrozenClock
from engine.delivery.sending import send_delivery
from engine.delivery.unsubscribe import InvalidTokenError, make_token, read_token
from engine.errors import NurtureError, WorkflowError
from engine.funnel.service import track, upsert_lead
from engine.http.api import create_api
from engine.models import Delivery, Event, Lead, Suppression, TopicOptOut
from engine.runner.inline import run_due
from engine.workflow.loading import load_workflows
from engine.workflow.sending_rules import load_policy
from tests.apps import outbox_app
from tests.channels.servers import SendGridSigner
from tests.conftest import START
from tests.shipped import EMAIL_TEMPLATES, SMS_TEMPLATES

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "workflows"
SENDING = """\
timezone: America/New_York
quiet_hours: {sms: "21:00-08:00"}
frequency_caps:
  email: {count: 3, per: 7d}
  sms: {count: 2, per: 7d}
rates: {sms: 1, email: 10, "+18005550100": 3}
retries: {max_attempts: 6, backoff: 30s}
send_timeout: 10m
handoff:
  owners: [ann@acme.test, bob@acme.test]
  rules: [{if: "company_size >= 1000", owner: enterprise@acme.test}]
  notify_owner: true
"""
FILES = ("scoring.yml", "lead-nurture.yml", "re-engagement.yml", "sending.yml")
KEY = "hostile-key-0123456789abcdef-0123456789"
SECRET = "hostile-unsubscribe-secret"
PUBLIC_URL = "https://nurture.acme.test"
TWILIO_TOKEN = "hostile-twilio-token"
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- Workflows ---------------------------------------------------------------------------------


def _source(name: str) -> str:
    return SENDING if name == "sending.yml" else (SHIPPED / name).read_text()


def _walk(node: Node, path: str = "", key: str | None = None) -> Iterator[tuple[Node, str, str]]:
    """Every node with the dotted field path the loader reports for it and the key it sits at."""
    yield node, path, key or ""
    if isinstance(node, MappingNode):
        for key_node, value in node.value:
            child = f"{path}.{key_node.value}" if path else str(key_node.value)
            yield from _walk(value, child, str(key_node.value))
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            yield from _walk(item, f"{path}[{index}]", key)


def _load(name: str, root: Node | str) -> None:
    """Write the shipped workflows (plus sending.yml) with `name` replaced by `root`; load all."""
    text = root if isinstance(root, str) else yaml.serialize(root, Dumper=yaml.SafeDumper)
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory) / "workflows"
        folder.mkdir()
        for path in SHIPPED.glob("*.yml"):
            shutil.copy(path, folder)
        (folder / "sending.yml").write_text(SENDING)
        (folder / name).write_text(text)
        problems = []
        for load in (
            lambda: load_workflows(folder, EMAIL_TEMPLATES, SMS_TEMPLATES),
            lambda: load_policy(folder),
        ):
            try:
                load()
            except WorkflowError as error:
                problems.extend(error.problems)
        if problems:
            raise WorkflowError(problems)


def _reported(name: str, root: Node, field: str, *words: str, key: str | None = None) -> None:
    """Load `root` as `name`, expecting a WorkflowError with a problem at the line of `field`
    (or of the added `key`) that names the field; `words` must appear in its message."""
    written = yaml.compose(yaml.serialize(root, Dumper=yaml.SafeDumper), Loader=yaml.SafeLoader)
    lines = {_line_of(written, field)}
    if key is not None:
        lines |= {
            key_node.start_mark.line + 1
            for node, _, _ in _walk(written)
            if isinstance(node, MappingNode)
            for key_node, _ in node.value
            if key_node.value == key
        }
    with pytest.raises(WorkflowError) as caught:
        _load(name, written)
    problems = caught.value.problems
    assert all(p.line >= 1 and p.file.endswith(".yml") for p in problems), problems
    here = [p for p in problems if p.file.endswith(name) and p.line in lines and p.field == field]
    assert here, f"nothing reported at {name}:{lines} {field}: {[str(p) for p in problems]}"
    assert any(all(w in str(p) for w in words) for p in here), [str(p) for p in here]
    where = f"{here[0].file}:{here[0].line}: "
    assert str(here[0]).startswith(f"{where}{field}: " if field else where)


def _line_of(root: Node, path: str) -> int:
    """The line of the node at a field path (the first, for a key and its value)."""
    return next(node.start_mark.line + 1 for node, at, _ in _walk(root) if at == path)


def _scalar(value: object) -> Node:
    return SafeRepresenter().represent_data(value)


def _pick(name: str, index: int, keys: set[str] | None = None, kind: type = ScalarNode) -> Any:
    root = yaml.compose(_source(name), Loader=yaml.SafeLoader)
    nodes = [
        (node, path, key)
        for node, path, key in _walk(root)
        if isinstance(node, kind) and (keys is None or key in keys) and path
    ]
    assume(nodes)
    return root, *nodes[index % len(nodes)]


# Mappings whose keys are free: property names in `where`, senders in `rates`.
FREE_MAPPINGS = ("where", "rates")


@EXAMPLES
@given(
    st.sampled_from(FILES),
    st.integers(min_value=0),
    st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12),
    st.one_of(st.none(), st.integers(), st.text(max_size=10), st.lists(st.integers(), max_size=2)),
)
def test_an_unknown_key_anywhere_is_named_with_its_file_line_and_field(
    name: str, index: int, suffix: str, value: object
) -> None:
    root = yaml.compose(_source(name), Loader=yaml.SafeLoader)
    mappings = [
        (node, path)
        for node, path, key in _walk(root)
        if isinstance(node, MappingNode) and key not in FREE_MAPPINGS
    ]
    mapping, path = mappings[index % len(mappings)]
    key = f"zz_{suffix}"  # no workflow key starts with zz_
    mapping.value.append((_scalar(key), _scalar(value)))
    # Reported at the key's line; a step takes one key, so there at the step's own line.
    _reported(name, root, path, key, key=key)


DURATION_KEYS = {"wait", "after", "every", "inactive_after", "per", "send_timeout", "backoff"}
NOT_DIGITS = st.characters(blacklist_categories=("Nd",), blacklist_characters="\x00")
BAD_DURATIONS = st.one_of(
    st.builds("{}{}".format, st.integers(max_value=0), st.sampled_from("smhdw")),
    st.builds(
        "{}{}".format,
        st.integers(min_value=1, max_value=10**4),
        st.text(
            alphabet=string.ascii_letters.translate({ord(c): None for c in "smhdw"}), min_size=1
        ),
    ),
    st.builds("{}d".format, st.floats(min_value=0.01, max_value=1e6).filter(lambda f: f % 1)),
    st.text(alphabet=NOT_DIGITS, max_size=12),
    st.booleans(),
    st.floats(allow_nan=True),
    st.lists(st.just("2d"), min_size=1, max_size=2),
    st.dictionaries(st.just("days"), st.integers(), min_size=1),
)


@EXAMPLES
@given(st.sampled_from(FILES), st.integers(min_value=0), BAD_DURATIONS)
def test_a_garbled_duration_is_named_with_its_file_line_and_field(
    name: str, index: int, garbled: object
) -> None:
    root, node, path, key = _pick(name, index, DURATION_KEYS)
    replacement = _scalar(garbled)
    _replace(root, node, replacement)
    _reported(name, root, path)


CONDITION_KEYS = {"enter_when", "exit_when", "if", "unless", "sql"}
DANGLING = [" and", " or", " >=", " ==", " not", " (", " in", " within", ")", " @"]


@EXAMPLES
@given(
    st.sampled_from(["scoring.yml", "lead-nurture.yml", "sending.yml"]),
    st.integers(min_value=0),
    st.sampled_from(DANGLING),
    st.booleans(),
)
def test_a_garbled_condition_is_named_with_its_file_line_and_field(
    name: str, index: int, junk: str, in_front: bool
) -> None:
    root, node, path, key = _pick(name, index, CONDITION_KEYS)
    assume(isinstance(node.value, str) and not node.value.replace(".", "").isdigit())
    # Dangling at the end is always wrong; in front too, except `not` (valid) and `)`.
    in_front = in_front and junk not in (")", " not")
    text = f"{junk.strip()} {node.value}" if in_front else node.value + junk
    _replace(root, node, _scalar(text))
    _reported(name, root, path)


@EXAMPLES
@given(
    st.sampled_from(["lead-nurture.yml", "re-engagement.yml"]),
    st.integers(min_value=0),
    st.one_of(st.text(max_size=30), st.integers(), st.none(), st.lists(st.text(max_size=3))),
)
def test_a_garbled_template_name_is_named_with_its_file_line_and_field(
    name: str, index: int, garbled: object
) -> None:
    templates = EMAIL_TEMPLATES | SMS_TEMPLATES
    assume(not (isinstance(garbled, str) and garbled.strip() in templates))
    root, node, path, key = _pick(name, index, {"email", "sms"})
    _replace(root, node, _scalar(garbled))
    _reported(name, root, path)


def _replace(root: Node, old: Node, new: Node) -> None:
    for parent, _, _ in _walk(root):
        if isinstance(parent, MappingNode):
            parent.value = [(k, new if v is old else v) for k, v in parent.value]
        elif isinstance(parent, SequenceNode):
            parent.value = [new if v is old else v for v in parent.value]


@EXAMPLES
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0),
            st.sampled_from(["delete", "replace"]),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(min_value=-(10**20), max_value=10**20),
                st.floats(),
                st.text(max_size=12),
                st.sampled_from(["2d", "21:00-08:00", "UTC", "Mars/Base", "-1", "0s", "sms"]),
                st.lists(st.text(max_size=4), max_size=2),
                st.dictionaries(st.sampled_from(["sms", "email", "count", "per"]), st.text()),
            ),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_sending_rules_load_or_raise_workflow_errors_naming_their_lines(
    mutations: list[tuple[int, str, object]],
) -> None:
    root = yaml.compose(SENDING, Loader=yaml.SafeLoader)
    for pick, action, value in mutations:
        slots = [
            (parent, i)
            for parent, _, _ in _walk(root)
            if isinstance(parent, MappingNode | SequenceNode)
            for i in range(len(parent.value))
        ]
        if not slots:
            break
        parent, i = slots[pick % len(slots)]
        if action == "delete":
            del parent.value[i]
        elif isinstance(parent, MappingNode):
            parent.value[i] = (parent.value[i][0], _scalar(value))
        else:
            parent.value[i] = _scalar(value)
    lines = len(yaml.serialize(root, Dumper=yaml.SafeDumper).splitlines())
    try:
        _load("sending.yml", root)
    except WorkflowError as error:
        assert error.problems
        for problem in error.problems:
            assert problem.file.endswith("sending.yml"), problem
            assert 1 <= problem.line <= max(lines, 1), problem


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("lead-nurture.yml", "wait: 2d", "wait: 3000000d"),
        ("lead-nurture.yml", "{after: 14d, goto: exit}", "{after: 500000w, goto: exit}"),
        ("lead-nurture.yml", '"clicked within 2d"', '"clicked within 3000000d"'),
        ("scoring.yml", "inactive_after: 45d", "inactive_after: 3000000d"),
        ("scoring.yml", "limit: {count: 2, per: 1d}", "limit: {count: 2, per: 3000000d}"),
    ],
    ids=["wait", "when_done", "within", "inactive_after", "limit"],
)
def test_a_duration_too_long_for_the_calendar_is_refused_at_validation(
    name: str, old: str, new: str
) -> None:
    """Validated durations are added to dates at run time: past year 9999 that overflows."""
    source = _source(name)
    assert old in source
    text = source.replace(old, new, 1)
    line = next(n for n, row in enumerate(text.splitlines(), start=1) if new in row)
    with pytest.raises(WorkflowError) as caught:
        _load(name, text)
    assert [p.line for p in caught.value.problems if p.file.endswith(name)] == [line]


# --- Lead records through the Python API ------------------------------------------------------

SPECIAL_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "\r\nBcc: x@evil.test",
    "{{ 7*7 }}",
    "<script>alert(1)</script>",
    "\u202eevil",
    "' OR 1=1 --",
    "x" * 201,
    "𝕏" * 150,
    "a" * 5000,
]
TEXT = st.one_of(st.text(max_size=30), st.sampled_from(SPECIAL_TEXT))
NUMBERS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.text(max_size=6) | st.sampled_from(["\x00", "\ud800"]), children, max_size=3
        )
    ),
    max_leaves=8,
)
DEEP = st.integers(min_value=30, max_value=60).map(lambda n: json.loads("[" * n + "]" * n))
VALUES = st.one_of(SCALARS, JSON, DEEP)
ATTRIBUTES = st.dictionaries(
    st.one_of(
        st.sampled_from(
            [
                "first_name",
                "last_name",
                "company",
                "title",
                "timezone",
                "email_consent",
                "sms_consent",
                "stage",
                "company_size",
                "industry",
            ]
        ),
        st.text(max_size=10),
    ),
    VALUES,
    max_size=4,
).filter(lambda a: not {"email", "phone", "external_id"} & set(a))
HOSTILE_IDENTITIES = st.fixed_dictionaries(
    {},
    optional={
        "email": st.one_of(TEXT, NUMBERS, JSON),
        "phone": st.one_of(TEXT, NUMBERS),
        "external_id": st.one_of(st.sampled_from(SPECIAL_TEXT), st.lists(st.integers())),
    },
)


@pytest.fixture
def rt_app(db: Engine, tmp_path: Path) -> App:
    """An App on the test database with the test workflows and the outbox for both channels."""
    return _app(db, FrozenClock(START), tmp_path)


def _app(db: Engine, clock: FrozenClock, tmp_path: Path) -> App:
    return outbox_app(
        db, clock, tmp_path, NURTURE_PUBLIC_URL=PUBLIC_URL, NURTURE_SECRET_KEY=SECRET
    )


def _check_stored(app: App, email: str, attributes: dict[str, Any]) -> None:
    """What upsert accepted is what the database gives back (an empty zone is no zone)."""
    with app.sessions() as s:
        lead = s.scalars(select(Lead).where(Lead.email == email)).one()
        for name in ("first_name", "last_name", "company", "title", "timezone"):
            if isinstance(attributes.get(name), str):
                expected = attributes[name] or None if name == "timezone" else attributes[name]
                assert getattr(lead, name) == expected, name
        for name in ("email_consent", "sms_consent"):
            if name in attributes:
                assert getattr(lead, name) is attributes[name], name


@EXAMPLES
@given(attributes=ATTRIBUTES)
def test_upsert_lead_takes_any_attributes_or_refuses_them_with_a_nurture_error(
    rt_app: App, attributes: dict[str, Any]
) -> None:
    address = f"{uuid.uuid4().hex[:12]}@hostile.test"
    try:
        with rt_app.sessions.begin() as s:
            upsert_lead(s, rt_app.rt, {"email": address, **attributes})
    except NurtureError:
        with rt_app.sessions() as s:  # refused: nothing half-written
            assert s.scalar(select(func.count()).where(Lead.email == address)) == 0
        return
    _check_stored(rt_app, address, attributes)


@EXAMPLES
@given(identity=HOSTILE_IDENTITIES, attributes=ATTRIBUTES)
def test_a_hostile_identity_is_refused_with_a_nurture_error(
    rt_app: App, identity: dict[str, Any], attributes: dict[str, Any]
) -> None:
    try:
        with rt_app.sessions.begin() as s:
            upsert_lead(s, rt_app.rt, {**identity, **attributes})
    except NurtureError:
        pass


@EXAMPLES
@given(
    attributes=ATTRIBUTES,
    event_type=st.one_of(st.sampled_from(["form_submitted", "page_viewed", "a" * 65]), TEXT),
    properties=st.dictionaries(st.text(max_size=8), VALUES, max_size=3),
    event_id=st.one_of(st.none(), TEXT),
)
def test_track_takes_any_event_or_refuses_it_with_a_nurture_error(
    rt_app: App,
    attributes: dict[str, Any],
    event_type: str,
    properties: dict[str, Any],
    event_id: str | None,
) -> None:
    address = f"{uuid.uuid4().hex[:12]}@hostile.test"
    key = f"{event_id}-{uuid.uuid4().hex}" if isinstance(event_id, str) and event_id else None
    try:
        with rt_app.sessions.begin() as s:
            result = track(
                s, rt_app.rt, {"email": address, **attributes}, event_type, properties, event_id=key
            )
    except NurtureError:
        with rt_app.sessions() as s:
            assert s.scalar(select(func.count()).where(Lead.email == address)) == 0
        return
    with rt_app.sessions() as s:
        stored = s.get_one(Event, result.event_id)
        assert (stored.type, stored.idempotency_key) == (event_type, key)


def test_a_consent_that_is_not_a_boolean_never_turns_consent_on(rt_app: App) -> None:
    """`"false"`, `"no"` and `0` from a CSV or JSON import must not read as consent."""
    for index, value in enumerate(["false", "no", "0", "off", []]):
        address = f"consent{index}@hostile.test"
        try:
            with rt_app.sessions.begin() as s:
                upsert_lead(s, rt_app.rt, {"email": address, "sms_consent": value})
        except NurtureError:
            continue
        with rt_app.sessions() as s:
            lead = s.scalars(select(Lead).where(Lead.email == address)).one()
            assert lead.sms_consent is False, value


# --- Lead records through the HTTP API ---------------------------------------------------------


@pytest.fixture
def client(rt_app: App) -> TestClient:
    environ = {"SENDGRID_WEBHOOK_PUBLIC_KEY": SIGNER.public_key, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN}
    api = create_api(rt_app, None, api_keys=[KEY], environ=environ, max_body_bytes=64 * 1024)
    return TestClient(api, headers={"Authorization": f"Bearer {KEY}"})


SIGNER = SendGridSigner()
LEAD_KEYS = ["email", "phone", "external_id", "first_name", "last_name", "company", "title",
             "timezone", "email_consent", "sms_consent", "fields", "stage", "nickname"]  # fmt: skip
LEAD_BODIES = st.dictionaries(st.sampled_from(LEAD_KEYS), VALUES, max_size=5)


def _post(client: TestClient, path: str, body: object) -> Any:
    content = json.dumps(body, allow_nan=True)  # NaN and Infinity go over the wire as Python writes
    response = client.post(path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 409, 413, 422), (response.status_code, response.text)
    if response.status_code == 422:
        assert all("loc" in item and "msg" in item for item in response.json()["detail"])
    return response


def _valid_email(body: dict[str, Any], identified: bool) -> dict[str, Any]:
    """Mostly a fresh valid email, so the other fields get checked; else whatever was drawn."""
    if identified or "email" not in body:
        return {**body, "email": f"{uuid.uuid4().hex[:12]}@api.hostile.test"}
    return body


@EXAMPLES
@given(body=LEAD_BODIES, identified=st.booleans())
def test_any_lead_body_is_upserted_or_refused_with_a_4xx_naming_the_field(
    client: TestClient, rt_app: App, body: dict[str, Any], identified: bool
) -> None:
    body = _valid_email(body, identified)
    response = _post(client, "/v1/leads", body)
    if response.status_code == 200:
        lead = response.json()
        for name in ("first_name", "last_name", "company", "title"):
            if name in body:
                assert lead[name] == body[name]
        if "fields" in body:
            assert lead["fields"] == body["fields"]
    elif isinstance(body.get("email"), str) and "@api.hostile.test" in body["email"]:
        with rt_app.sessions() as s:
            assert s.scalar(select(func.count()).where(Lead.email == body["email"])) == 0


@EXAMPLES
@given(
    lead=LEAD_BODIES,
    identified=st.booleans(),
    extra=st.fixed_dictionaries(
        {},
        optional={
            "type": st.one_of(st.sampled_from(["form_submitted", "page_viewed"]), VALUES),
            "properties": VALUES,
            "id": VALUES,
            "occurred_at": st.one_of(
                VALUES,
                st.sampled_from(
                    [
                        "2026-03-02T09:00:00Z",
                        "0001-01-01T00:00:00+14:00",
                        "9999-12-31T23:59:59Z",
                        "2026-02-30T09:00:00Z",
                        "2026-03-02T09:00:00+99:00",
                    ]
                ),  # fmt: skip
            ),
        },
    ),
    batch=st.booleans(),
)
def test_any_event_body_is_recorded_or_refused_with_a_4xx(
    client: TestClient,
    rt_app: App,
    lead: dict[str, Any],
    identified: bool,
    extra: dict[str, Any],
    batch: bool,
) -> None:
    event = {"lead": _valid_email(lead, identified), "type": "page_viewed", **extra}
    response = _post(client, "/v1/events", {"events": [event, event]} if batch else event)
    if response.status_code == 200:
        results = response.json()["events"] if batch else [response.json()]
        with rt_app.sessions() as s:
            for result in results:
                stored = s.get_one(Event, result["event_id"])
                assert stored.type == event["type"]


# --- Injection through lead fields into a real send --------------------------------------------

HOSTILE_NAMES = [
    "\r\nBcc: x@evil.test",
    "Jo\r\nBcc: x@evil.test\r\n\r\n<b>body</b>",
    "{{ 7*7 }}{% if true %}x{% endif %}",
    "<script>alert(1)</script>",
    '"Evil" <evil@evil.test>, other@evil.test',
    "=?utf-8?q?=0D=0ABcc:_x@evil.test?=",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_lead_fields_cannot_inject_headers_markup_or_template_code_into_a_sent_email(
    db: Engine, tmp_path: Path, name: str
) -> None:
    app = _app(db, FrozenClock(START), tmp_path)
    lead = {"email": "victim@hostile.test", "first_name": name, "last_name": name, "company": name}
    with app.sessions.begin() as s:
        track(s, app.rt, lead, "form_submitted")
    run_due(app.sessions, app.rt)
    with app.sessions() as s:
        delivery_id = s.scalars(select(Delivery.id)).one()
    status = send_delivery(app, delivery_id)
    with app.sessions() as s:
        delivery = s.get_one(Delivery, delivery_id)
    assert (status, delivery.status) == ("sent", "sent"), delivery.detail  # the lead is mailed

    raw = (tmp_path / "outbox" / "email" / f"{delivery_id}.eml").read_bytes()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    names = {header.lower() for header in message.keys()}
    assert names <= {
        "from", "to", "reply-to", "subject", "date", "message-id", "mime-version",
        "content-type", "list-unsubscribe", "list-unsubscribe-post", "x-nurture-delivery-id",
    }, names  # fmt: skip
    assert "bcc" not in names and "cc" not in names
    assert len(message.get_all("To")) == 1
    assert [a.addr_spec for a in message["To"].addresses] == ["victim@hostile.test"]
    naive = email.message_from_bytes(raw)  # how older tools read the recipients
    assert [address for _, address in getaddresses(naive.get_all("To"))] == ["victim@hostile.test"]
    for header in ("To", "Subject"):
        assert "\r" not in str(message[header]) and "\n" not in str(message[header])
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "<script>" not in html and "<b>body</b>" not in html
    assert "49" not in str(message["Subject"]) + text
    if "{{" in name:
        assert "{{ 7*7 }}" in text and "{{ 7*7 }}" in html
        assert "{{ 7*7 }}" in str(message["Subject"])


# --- Forged tokens and oversized bodies --------------------------------------------------------


ANA = {"email": "ana@hostile.test", "phone": "+15005550001", "sms_consent": True}


def _enrolled(app: App) -> int:
    with app.sessions.begin() as s:
        return track(s, app.rt, ANA, "form_submitted").lead_id


def _untouched(app: App) -> None:
    with app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Suppression)) == 0
        assert s.scalars(select(Lead.email_consent)).all() == [True]
        assert s.scalar(select(func.count()).select_from(Event)) == 1


@EXAMPLES
@given(
    edit=st.one_of(
        st.tuples(st.integers(min_value=0), st.characters(blacklist_characters="/?#%")),
        st.text(
            alphabet=string.printable.translate({ord(c): None for c in "/?#%\\ "}), max_size=80
        ),
    )
)
def test_a_forged_or_altered_unsubscribe_token_is_refused_and_changes_nothing(
    client: TestClient, rt_app: App, edit: object
) -> None:
    lead_id = _enrolled(rt_app) if not _leads(rt_app) else _leads(rt_app)[0]
    genuine = make_token(SECRET, lead_id, "drip")
    if isinstance(edit, tuple):  # one character of the genuine token changed
        position, character = edit
        position %= len(genuine)
        assume(genuine[position] != character)
        token = genuine[:position] + character + genuine[position + 1 :]
    else:
        token = edit
        assume(token != genuine and token.strip(".") and token not in (".", ".."))
    assume(not _verifies(token))  # other spellings of the genuine token: see the test below
    for method in ("get", "post"):
        path = f"/u/{quote(token, safe='')}"
        response = getattr(client, method)(path, headers={"Authorization": ""})
        assert response.status_code in (404, 405), (token, response.status_code)
    _untouched(rt_app)


def _verifies(token: str) -> bool:
    try:
        read_token(SECRET, token)
    except InvalidTokenError:
        return False
    return True


def test_only_the_issued_spelling_of_an_unsubscribe_token_is_accepted(
    client: TestClient, rt_app: App
) -> None:
    """The last base64 character of the signature has spare bits, and padding may be added:
    each such spelling is another token (another idempotency key, another `unsubscribed`)."""
    genuine = make_token(SECRET, _enrolled(rt_app), "drip")
    alphabet = string.ascii_letters + string.digits + "-_"
    spellings = [genuine[:-1] + c for c in alphabet if c != genuine[-1]]
    spellings += [genuine + "=", genuine + "=="]
    accepted = [
        token
        for token in spellings
        if client.post(f"/u/{quote(token, safe='')}", headers={"Authorization": ""}).status_code
        != 404
    ]
    assert accepted == []
    _untouched(rt_app)


def _leads(app: App) -> list[int]:
    with app.sessions() as s:
        return list(s.scalars(select(Lead.id)))


def test_oversized_bodies_are_refused_on_every_unauthenticated_endpoint(
    client: TestClient, rt_app: App
) -> None:
    lead_id = _enrolled(rt_app)
    token = make_token(SECRET, lead_id, "drip")
    big = b"x" * (64 * 1024 + 1)
    items = json.dumps([{"event": "click", "email": "ana@hostile.test", "pad": "y" * 70_000}])
    signed = items.encode()
    stamp = "1772442000"
    posts = {
        "/webhooks/sendgrid": (
            signed,
            {
                "Content-Type": "application/json",
                "X-Twilio-Email-Event-Webhook-Signature": SIGNER.sign(stamp, signed),
                "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
            },
        ),
        "/webhooks/twilio/inbound": (
            b"Body=STOP&From=%2B15005550001&MessageSid=SM1&pad=" + big,
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
        f"/u/{token}": (
            b"List-Unsubscribe=One-Click&pad=" + big,
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
    }
    form = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": ""}
    for path, (body, headers) in posts.items():
        declared = client.post(path, content=body, headers={**headers, "Authorization": ""})
        streamed = client.post(
            path, content=iter([body[:1000], body[1000:]]), headers={**headers, "Authorization": ""}
        )
        assert declared.status_code == streamed.status_code == 413, path
    _untouched(rt_app)
    small = client.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click", headers=form)
    assert small.status_code == 200  # the same endpoint under the limit does act
    with rt_app.sessions() as s:  # one-click leaves the topic of the email
        assert s.scalar(select(func.count()).select_from(TopicOptOut)) == 1


@EXAMPLES
@given(
    items=st.lists(
        st.dictionaries(
            st.sampled_from(
                [
                    "event",
                    "email",
                    "timestamp",
                    "sg_event_id",
                    "sg_message_id",
                    "delivery_id",
                    "url",
                    "reason",
                    "type",
                    "status",
                ]
            ),  # fmt: skip
            st.one_of(
                VALUES,
                st.sampled_from(["click", "open", "bounce", "unsubscribe", "spamreport"]),
                st.just(ANA["email"]),  # so that events reach the lead and the engine
            ),
            max_size=8,
        ),
        max_size=4,
    )
)
def test_a_correctly_signed_sendgrid_batch_of_junk_is_answered_without_a_server_error(
    client: TestClient, rt_app: App, items: list[dict[str, Any]]
) -> None:
    _leads(rt_app) or _enrolled(rt_app)
    items = [{"sg_event_id": uuid.uuid4().hex, **item} for item in items]
    body = json.dumps(items, allow_nan=True).encode()
    stamp = "1772442000"
    headers = {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": SIGNER.sign(stamp, body),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        "Authorization": "",
    }
    response = client.post("/webhooks/sendgrid", content=body, headers=headers)
    assert response.status_code in (200, 400), (response.status_code, response.text)
    assert response.status_code == 200 or "not" in response.json()["detail"]


@EXAMPLES
@given(body=st.one_of(TEXT, st.sampled_from(["STOP", " stop ", "START", "HELP", "UNSTOP"])))
def test_a_correctly_signed_twilio_inbound_message_of_any_text_is_answered_cleanly(
    client: TestClient, rt_app: App, body: str
) -> None:
    _leads(rt_app) or _enrolled(rt_app)  # the sender is a known lead: replies are recorded
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "From": ANA["phone"], "Body": body}
    params = {
        k: v.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for k, v in params.items()
    }
    url = f"{PUBLIC_URL}/webhooks/twilio/inbound"
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, params)
    response = client.post(
        "/webhooks/twilio/inbound",
        data=params,
        headers={"X-Twilio-Signature": signature, "Authorization": ""},
    )
    assert response.status_code == 200, response.text  # Twilio wants TwiML, whatever was said
    assert response.headers["content-type"].startswith("text/xml")
