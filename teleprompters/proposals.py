"""Reading proposals: what every teleprompter does with a prompt model's reply before it is a candidate.

Two ways to get instructions out of a proposer. When the prompt model can be held to a JSON schema
(local GGUF models through llama.cpp's grammars; remote models whose provider supports response
schemas) the request carries :data:`PROPOSAL_SCHEMA`: the model first writes what it makes of the
examples as a general rule (``"rule"``: what turns an input into its correct output),
then the instructions, and it cannot write anything else. Otherwise the
reply is read leniently from the tags the meta-prompt asked for (``<START>...<END>``, ``<INS>...</INS>``),
numbered lines, or the whole text. Either way :func:`clean_instruction` strips echoes and markup.

Example:
    >>> read_structured('{"rule": "outputs are plurals", "instructions": ["Write the plural."]}', 3)
    ['Write the plural.']
    >>> parse_items("<START>a<END> and <START>b<END>", 5)
    ['a', 'b']
"""

from __future__ import annotations

import json
import re
from typing import Any

STRUCTURED_REQUEST = (
    "\n\nReply in JSON only, as {{\"rule\": \"...\", \"instructions\": [...]}}. First, in \"rule\", state in "
    "one sentence the general rule that turns any input of this task into its correct output. Then give "
    "{count} instruction(s) in \"instructions\": each a general command that tells a model to apply that rule "
    "to any input, not an answer and not an example, without tags."
)


def proposal_schema(count: int) -> dict[str, Any]:
    """The JSON schema a structured proposal is held to: a rule, then ``count`` instructions at most."""
    return {
        "type": "object",
        "properties": {
            "rule": {"type": "string"},
            "instructions": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": count},
        },
        "required": ["rule", "instructions"],
    }


def structured_options(count: int) -> dict[str, Any]:
    """LM call options that hold the reply to :func:`proposal_schema`."""
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "proposal", "schema": proposal_schema(count)}}}


def read_structured(reply: str, count: int) -> list[str] | None:
    """The instructions of a structured reply, or None when it is not the JSON asked for."""
    try:
        data = json.loads(reply)
    except (TypeError, ValueError):
        return None
    items = data.get("instructions") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    return [item.strip() for item in items if isinstance(item, str) and item.strip()][:count]


_TAGGED = re.compile(r"<START>(.*?)(?:<END>|$)", re.IGNORECASE | re.DOTALL)
_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.*)$")


def parse_items(text: str | None, count: int) -> list[str]:
    """Up to ``count`` items from a reply: ``<START>...<END>`` spans, else numbered/bulleted lines, else the text."""
    tagged = [item.strip() for item in _TAGGED.findall(text or "") if item.strip()]
    if tagged:
        return tagged[:count]
    listed = [m.group(1).strip() for line in (text or "").splitlines() if (m := _ITEM.match(line))]
    if len(listed) >= 2:
        return listed[:count]
    text = (text or "").strip()
    return [text] if text else []


_ECHO_PREFIXES = re.compile(
    r"^\s*(?:the\s+instruction\s+(?:was|is)\s+to|instruction\s*:|new\s+instruction\s*:|improved\s+instruction\s*:|"
    r"answer\s*:|output\s*:|here(?:'s| is) (?:the|an|my) (?:improved |new )?instruction\s*:?)\s*",
    re.IGNORECASE,
)


def clean_instruction(text: str | None) -> str:
    """Strip quotes, echoes such as "The instruction was to" and markup; first paragraph; sentence-cased.

    >>> clean_instruction('The instruction was to "write the plural of the word."')
    'Write the plural of the word.'
    """
    text = (text or "").strip()
    text = re.sub(r"</?(?:INS|START|END)>", "", text, flags=re.IGNORECASE).strip()
    for _ in range(3):
        stripped = _ECHO_PREFIXES.sub("", text).strip().strip("\"'`*“”").strip()
        if stripped == text:
            break
        text = stripped
    lines = [line.strip() for line in text.splitlines()]
    while len(lines) > 1 and (not lines[0] or (lines[0].endswith(":") and len(lines[0]) < 120)):
        lines.pop(0)  # a header such as "Here is the rewritten instruction:" before the instruction itself
    text = "\n".join(lines).split("\n\n")[0].strip()
    text = _ECHO_PREFIXES.sub("", text).strip().strip("\"'`*“”").strip()
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    return text

FUNCTION_WORDS = frozenset("""
a an the and or but if then else of to in on at by for with from into onto as is are was were be been being it its
this that these those there here which who whom whose what when where why how all any each every some no not nor do
does did don't doesn't done doing can could should would will shall may might must just only also than so such very too
more most less same other own one it's i you your yours we our they them their he she his her me my us get gets got
make makes let lets use using used give gives given write writes take takes put please
""".split())
"""Words that carry no content of their own: a proposal sharing them with a meta-prompt shares nothing."""


def content_words(text: str) -> set[str]:
    """The words of ``text`` that carry content, lowercased, function words left out, a plural's "s" dropped.

    >>> sorted(content_words("Turn the inputs into their outputs' plurals, please."))
    ['input', 'output', 'plural', 'turn']
    """
    words = {word.removesuffix("'s").strip("'") for word in re.findall(r"[a-z0-9']+", text.lower())} - FUNCTION_WORDS
    return {word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word for word in words} - {""}



__all__ = [
    "FUNCTION_WORDS",
    "STRUCTURED_REQUEST",
    "clean_instruction",
    "content_words",
    "parse_items",
    "proposal_schema",
    "read_structured",
    "structured_options",
]
