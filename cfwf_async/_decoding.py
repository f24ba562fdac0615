"""How answer bodies become models: a strict decoder first, second chances after.

The strict decoders are one typed msgspec pass each, and they run first. Real answers
have shapes those types cannot express, and each has its own, slower, way through,
taken only after the strict pass refused the body:

- a step type this version does not know (decoded one step at a time, so the unknown
  one becomes an :class:`~cfwf_async.models.UnknownStep` and the rest stay typed; its
  tag and keys are then learnt, and later logs decode it in the strict pass);
- a timestamp without an offset, which is UTC; an empty ``ended_on`` in a listing;
- half a surrogate pair escaped in a string (``"x\\ud83d"``), which JavaScript writes
  when it cuts a string mid-emoji: replaced by U+FFFD;
- an error body whose items are strings;
- a rate-limit header in another shape than Cloudflare's exact one.

Every function raises only :class:`msgspec.DecodeError` (ValidationError included),
ValueError, TypeError or RecursionError; :mod:`cfwf_async._protocol`, which owns the
public decoding functions, turns those into the SDK's own exceptions.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Callable
from typing import Any, Final, TypeVar, Union

import msgspec

from .models import (
    Envelope,
    ErrorItem,
    Instance,
    InstanceSummary,
    KnownStep,
    RollbackStep,
    SleepStep,
    Step,
    StepOutput,
    StepRun,
    TerminationStep,
    UnknownStep,
    WaitForEventStep,
)

T = TypeVar("T")

_KNOWN_STEPS: Final[frozenset[str]] = frozenset(
    str(cls.__struct_config__.tag)
    for cls in (StepRun, RollbackStep, SleepStep, WaitForEventStep, TerminationStep)
)

_instance_decoder: Final = msgspec.json.Decoder(Envelope[Instance])
_step_output_decoder: Final = msgspec.json.Decoder(Envelope[StepOutput])
_flat_step_output_decoder: Final = msgspec.json.Decoder(StepOutput)
_summary_page_decoder: Final = msgspec.json.Decoder(Envelope[list[InstanceSummary]])
_step_decoder: Final = msgspec.json.Decoder(KnownStep)
_raw_decoder: Final = msgspec.json.Decoder()


# ---------------------------------------------------------------------------
# Lone surrogates

# Left to right over escapes only, so ``\\\\ud83d`` (an escaped backslash, then text) is
# never mistaken for an escape: an escaped backslash or a whole pair is kept, a lone
# half is replaced.
_ESCAPE_RE: Final = re.compile(
    rb"\\(?:\\|u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|(u[dD][89a-fA-F][0-9a-fA-F]{2}))"
)


def _keep_or_replace(m: re.Match[bytes]) -> bytes:
    return b"\\ufffd" if m.group(1) is not None else m.group(0)


def _replace_lone_surrogates(body: bytes) -> bytes | None:
    """``body`` with every lone surrogate escape replaced by ``\\ufffd``; None if none."""
    if b"\\u" not in body:
        return None
    fixed = _ESCAPE_RE.sub(_keep_or_replace, body)
    return None if fixed == body else fixed


def surrogate_tolerant(decode: Callable[[bytes], T], body: bytes) -> T:
    """``decode(body)``, run again with lone surrogates replaced if that is why it failed.

    The common body pays nothing: the body is searched for lone surrogates only after
    msgspec refused it as malformed JSON.
    """
    try:
        return decode(body)
    except msgspec.DecodeError as exc:
        # msgspec words this error differently by context, so look at the body instead.
        fixed = None if isinstance(exc, msgspec.ValidationError) else _replace_lone_surrogates(body)
        if fixed is None:
            raise
    return decode(fixed)


# ---------------------------------------------------------------------------
# Repairs on plain JSON, at known fields only

_NAIVE_RE: Final = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(?:\.\d+)?")
_STEP_TIMES: Final = ("start", "end")
_INSTANCE_TIMES: Final = ("queued", "start", "end")
_SUMMARY_TIMES: Final = ("created_on", "started_on", "ended_on", "modified_on")


def _as_utc(obj: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Give the timestamps at ``keys`` a ``Z`` when they have no offset: they are UTC.

    Only known timestamp fields are touched, never a string inside ``output`` or
    ``params`` that happens to look like one.
    """
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str) and _NAIVE_RE.fullmatch(value):
            obj[key] = value + "Z"


def _as_int(obj: object, keys: tuple[str, ...]) -> None:
    """Counts typed as ints that the API sends as ``50.0``: ints, when whole.

    Only for fields the reference does not type as ``number``; those are
    ``int | float`` in the models and need no repair.
    """
    if isinstance(obj, dict):
        for key in keys:
            value = obj.get(key)
            if type(value) is float and value.is_integer():
                obj[key] = int(value)


def _json_envelope(body: bytes) -> dict[str, Any]:
    """The body as plain JSON, checked to be an object, for the repairs to work on."""
    doc = _raw_decoder.decode(body)
    if not isinstance(doc, dict):
        raise msgspec.ValidationError(f"Expected `object`, got `{type(doc).__name__}`")
    return doc


# ---------------------------------------------------------------------------
# Steps


def _in_step(exc: msgspec.ValidationError, index: int) -> msgspec.ValidationError:
    """``exc`` with its path placed inside ``$.result.steps[index]``."""
    text = str(exc)
    at = f"$.result.steps[{index}]"
    if "- at `$" in text:
        return msgspec.ValidationError(text.replace("- at `$", f"- at `{at}", 1))
    return msgspec.ValidationError(f"{text} - at `{at}`")


def _unknown(raw: object, index: int) -> UnknownStep | None:
    """The step as an UnknownStep if its tag is not a known one, else None."""
    if not isinstance(raw, dict):
        raise _in_step(msgspec.ValidationError("a step is not an object"), index)
    kind = raw.get("type")
    if isinstance(kind, str) and kind in _KNOWN_STEPS:
        return None
    # A missing or non-string tag is "", not "None" or "5", which could pass for a
    # real type name.
    return UnknownStep(type=kind if isinstance(kind, str) else "", fields=raw)


def _decode_raw_steps(raws: list[msgspec.Raw]) -> tuple[list[Step], bool]:
    """Typed steps, one decode each; and whether any step needed a second chance.

    A step the strict decoder refuses is decoded as plain JSON: kept raw if its type is
    unknown, else repaired (a naive timestamp) and converted.
    """
    steps: list[Step] = []
    found = False
    unknown_types: dict[str, dict[str, Any]] = {}
    for index, raw in enumerate(raws):
        try:
            steps.append(_step_decoder.decode(raw))
            continue
        except msgspec.ValidationError:
            pass
        plain = _raw_decoder.decode(raw)
        unknown = _unknown(plain, index)
        if unknown is not None:
            steps.append(unknown)
            if unknown.type:
                unknown_types.setdefault(unknown.type, {}).update(unknown.fields)
            else:
                found = True
            continue
        found = True
        _repair_step(plain)
        try:
            steps.append(msgspec.convert(plain, KnownStep))
        except msgspec.ValidationError as exc:
            raise _in_step(exc, index) from None
    if unknown_types and not LEARNT.learn(unknown_types):
        found = True
    return steps, found


def _repair_step(raw: dict[str, Any]) -> None:
    _as_utc(raw, _STEP_TIMES)
    attempts = raw.get("attempts")
    for attempt in attempts if isinstance(attempts, list) else ():
        if isinstance(attempt, dict):
            _as_utc(attempt, _STEP_TIMES)


def _convert_steps(raws: object) -> list[Step]:
    """Steps decoded as plain JSON: repaired, typed, unknown types kept as they came."""
    if not isinstance(raws, list):
        raise msgspec.ValidationError("Expected `array` - at `$.result.steps`")
    out: list[Step | None] = []
    known: list[tuple[int, dict[str, Any]]] = []
    for index, raw in enumerate(raws):
        unknown = _unknown(raw, index)
        out.append(unknown)
        if unknown is None:
            _repair_step(raw)
            known.append((index, raw))
    try:
        # One convert for all known steps: far cheaper than one per step.
        typed = msgspec.convert([raw for _, raw in known], list[KnownStep])
    except msgspec.ValidationError:
        for index, raw in known:  # only to name the step that failed
            try:
                msgspec.convert(raw, KnownStep)
            except msgspec.ValidationError as exc:
                raise _in_step(exc, index) from None
        raise
    for (index, _), step in zip(known, typed, strict=True):
        out[index] = step
    return [step for step in out if step is not None]


# ---------------------------------------------------------------------------
# Instances


class _InstanceHead(Instance, frozen=True):
    """An instance with its steps left undecoded, to decode them one at a time."""

    steps: list[msgspec.Raw] = msgspec.field(default_factory=list)  # type: ignore[assignment]


_head_decoder: Final = msgspec.json.Decoder(Envelope[_InstanceHead])
_INSTANCE_FIELDS: Final = tuple(f for f in Instance.__struct_fields__ if f != "steps")


class _Recent:
    """Whether the last instance needed the step-by-step path (``by_step``).

    A program polls the same instances over and over: once a log held a step the strict
    decoders refuse for a reason they cannot learn (a naive timestamp, say), starting
    with the step-by-step path saves a strict pass that would fail part-way. It only
    ever orders correct paths, so sharing it between sessions and threads is harmless.
    """

    __slots__ = ("by_step",)

    def __init__(self) -> None:
        self.by_step = False


RECENT: Final = _Recent()


class _LearntStep(msgspec.Struct, frozen=True, gc=False, tag_field="type",
                  forbid_unknown_fields=True):
    """Base of the types made at run time for step tags this version does not know.

    Every field is ``Any`` and named after a key seen in a step of that tag, so the
    strict pass reads such a step as plain JSON, as the step-by-step path would. A key
    not seen before is refused (``forbid_unknown_fields``), which sends that body down
    the step-by-step path, where the key is learnt too.
    """

    def unknown(self) -> UnknownStep:
        tag = str(self.__struct_config__.tag)
        fields: dict[str, Any] = {"type": tag}
        for name, key in zip(self.__struct_fields__, self.__struct_encode_fields__,
                             strict=True):
            value = getattr(self, name)
            if value is not msgspec.UNSET:
                fields[key] = value
        return UnknownStep(type=tag, fields=fields)


# A server choosing the tags and keys must not make us build types without end: past
# these bounds an unknown step stays on the step-by-step path.
MAX_LEARNT_TYPES: Final = 16
MAX_LEARNT_KEYS: Final = 64


def _learnt_type(tag: str, keys: tuple[str, ...]) -> type[_LearntStep]:
    names = [f"f{i}" for i in range(len(keys))]
    return msgspec.defstruct(  # type: ignore[return-value]
        "_Learnt", [(name, Any, msgspec.UNSET) for name in names], bases=(_LearntStep,),
        tag=tag, rename=dict(zip(names, keys, strict=True)),
    )


class _Learnt:
    """Step types met on the wire that this version does not know, read in one pass.

    A newer Workflows runtime puts its new step type in every log it writes, so a
    program that met one will meet it again: once learnt, the strict pass decodes it
    (to a placeholder, then an :class:`~cfwf_async.models.UnknownStep`) instead of
    failing part-way and decoding the log again one step at a time. The state is
    replaced whole, never changed in place, so readers in other threads see one
    consistent decoder; like :data:`RECENT` it only chooses between correct paths.
    """

    __slots__ = ("keys", "state")

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, ...]] = {}
        # The decoder and the placeholder types it makes: one tuple, read once per decode.
        self.state: tuple[msgspec.json.Decoder[Any], frozenset[type]] | None = None

    def learn(self, seen: dict[str, dict[str, Any]]) -> bool:
        """Learn the tags and keys of the unknown ``seen`` steps; False if past a bound."""
        keys = dict(self.keys)
        within = True
        for tag, fields in seen.items():
            old = keys.get(tag, ())
            new = tuple(dict.fromkeys(old + tuple(k for k in fields if k != "type")))
            if (tag not in keys and len(keys) >= MAX_LEARNT_TYPES) or (
                len(new) > MAX_LEARNT_KEYS
            ):
                within = False
            elif new != old or tag not in keys:
                keys[tag] = new
        if keys != self.keys:
            self._build(keys)
        return within

    def _build(self, keys: dict[str, tuple[str, ...]]) -> None:
        types = [_learnt_type(tag, k) for tag, k in keys.items()]
        steps: Any = Union[(*typing.get_args(KnownStep), *types)]
        head = msgspec.defstruct(
            "_LearntInstance", [("steps", list[steps], msgspec.field(default_factory=list))],
            bases=(Instance,),
        )
        decoder = msgspec.json.Decoder(Envelope[head])  # type: ignore[valid-type]
        self.keys, self.state = keys, (decoder, frozenset(types))


def _instance_learnt(
    state: tuple[msgspec.json.Decoder[Any], frozenset[type]], body: bytes
) -> Envelope[Instance]:
    """The strict pass with the learnt step types; their placeholders become UnknownStep."""
    decoder, types = state
    env = decoder.decode(body)
    head = env.result
    if head is None:
        return _as_instance(env, None, [])
    steps = [s.unknown() if type(s) in types else s for s in head.steps]
    return _as_instance(env, head, steps)


LEARNT: Final = _Learnt()


def _as_instance(env: Envelope[Any], head: Any, steps: list[Step]) -> Envelope[Instance]:
    """``env`` around a plain :class:`Instance` of ``head``'s fields and ``steps``."""
    instance = None if head is None else Instance(
        **{name: getattr(head, name) for name in _INSTANCE_FIELDS}, steps=steps
    )
    return Envelope(
        success=env.success,
        errors=env.errors,
        messages=env.messages,
        result=instance,
        result_info=env.result_info,
    )


def _instance_by_step(body: bytes) -> Envelope[Instance]:
    """Decode an instance one step at a time, so an unknown type becomes UnknownStep."""
    env = _head_decoder.decode(body)
    head = env.result
    RECENT.by_step = False
    steps: list[Step] = []
    if head is not None:
        steps, RECENT.by_step = _decode_raw_steps(head.steps)
    return _as_instance(env, head, steps)


def _instance_lenient(body: bytes) -> Envelope[Instance]:
    """The last resort: decode as plain JSON, repair known fields, then convert."""
    doc = _json_envelope(body)
    result = doc.get("result")
    steps = None
    if isinstance(result, dict):
        steps = result.pop("steps", None)
        _as_utc(result, _INSTANCE_TIMES)
    env = msgspec.convert(doc, Envelope[Instance])
    if steps is not None and env.result is not None:
        instance = msgspec.structs.replace(env.result, steps=_convert_steps(steps))
        env = msgspec.structs.replace(env, result=instance)
    return env


def instance_envelope(body: bytes) -> Envelope[Instance]:
    """A ``get_instance`` body.

    The strict decoder first (with the step types learnt so far; or the step-by-step
    one, when the last instance needed it); the step-by-step one when the strict one
    failed inside a step; the lenient one when the others failed (a naive timestamp
    outside the steps), whose error is the one raised.
    """
    try:
        if RECENT.by_step:
            return _instance_by_step(body)
        learnt = LEARNT.state
        if learnt is not None:
            return _instance_learnt(learnt, body)
        return _instance_decoder.decode(body)
    except msgspec.ValidationError as exc:
        if not RECENT.by_step and "`$.result.steps[" in str(exc):
            try:
                return _instance_by_step(body)
            except msgspec.ValidationError:
                pass
    return _instance_lenient(body)


def step_output_envelope(body: bytes) -> Envelope[StepOutput] | StepOutput:
    """A ``get_step_output`` JSON body, enveloped or bare."""
    try:
        env = _step_output_decoder.decode(body)
    except msgspec.ValidationError:
        env = msgspec.convert(_json_envelope(body), Envelope[StepOutput])
    if env.result is None and env.success is None:
        # Cloudflare's reference page calls this answer "a flat status-shaped JSON
        # body" while its schema shows the envelope: accept {status, error, output}
        # bare too, rather than fail every call if the live API sends it that way.
        return _flat_step_output_decoder.decode(body)
    return env


def summary_page_envelope(body: bytes) -> Envelope[list[InstanceSummary]]:
    """A listing page; the lenient path repairs its date-times and counts.

    The API sends ``ended_on: ""`` while an instance runs, which no datetime decodes:
    pages of finished instances decode in one pass, the others in two.
    """
    try:
        return _summary_page_decoder.decode(body)
    except msgspec.ValidationError:
        pass
    doc = _json_envelope(body)
    items = doc.get("result")
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict):
            for key in _SUMMARY_TIMES:
                if item.get(key) == "":
                    item[key] = None
            _as_utc(item, _SUMMARY_TIMES)
    # One convert for the whole page: half the cost of one per item.
    return msgspec.convert(doc, Envelope[list[InstanceSummary]])


# ---------------------------------------------------------------------------
# Error bodies


def _error_item(raw: object) -> ErrorItem | None:
    """One ``errors``/``messages`` entry, whatever its shape; None for non-items."""
    if isinstance(raw, ErrorItem):
        return raw
    if isinstance(raw, str):
        return ErrorItem(message=raw)
    if not isinstance(raw, dict):
        return None
    try:
        return msgspec.convert(raw, ErrorItem)
    except msgspec.ValidationError:
        # Keep what can be kept of a malformed item: its text is why it was sent.
        message = raw.get("message")
        return ErrorItem(message=message if isinstance(message, str) else "")


def error_items(raws: object) -> list[ErrorItem]:
    """Every usable entry of an ``errors`` or ``messages`` value."""
    if not isinstance(raws, list):
        return []
    return [item for item in map(_error_item, raws) if item is not None]


class _ErrorBody(msgspec.Struct, gc=False):
    errors: Any = None
    messages: Any = None


_error_body_decoder: Final = msgspec.json.Decoder(_ErrorBody)


def decode_error_body(body: bytes) -> tuple[list[ErrorItem], list[ErrorItem]]:
    """The ``errors`` and ``messages`` items of a failure's body.

    Both are empty for an HTML, empty or non-envelope body.
    """
    if not body or body.lstrip()[:1] != b"{":
        return [], []
    try:
        env = surrogate_tolerant(_error_body_decoder.decode, body)
    except (msgspec.DecodeError, RecursionError):
        return [], []
    return error_items(env.errors), error_items(env.messages)


# ---------------------------------------------------------------------------
# Rate-limit headers

_PARAM_RE: Final = re.compile(r";\s*([A-Za-z][A-Za-z0-9_*-]*)\s*=\s*([^;,\s]+)")


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def header_numbers(value: str, *names: str) -> tuple[float | None, ...]:
    """Numeric parameters of a structured-field header's first item (RFC 8941, tolerant).

    None for a parameter that is absent, negative, not finite or not a number.
    """
    first = value.split(",", 1)[0]
    params = {k.lower(): v.strip('"') for k, v in _PARAM_RE.findall(first)}
    return tuple(_number(params.get(name)) for name in names)
