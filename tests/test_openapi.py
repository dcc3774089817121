"""/openapi.json against the hub itself: its patterns are the validators' rules, and
schemathesis's generated requests (thousands) against a live `hub serve` never meet a 5xx, a
response the document does not describe, or a valid request refused."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from hub.core.ids import MAX_ACCOUNT_ID_LENGTH, StreamId, is_valid_account_id, normalize_email
from tests.support import HubProcess, token

DOCUMENT = json.loads((Path(__file__).parent.parent / "hub" / "web" / "openapi.json").read_text())
CONFIG = Path(__file__).parent / "schemathesis.toml"


def _pattern(schema: dict[str, Any]) -> re.Pattern[str]:
    """A schema's pattern, anchored as JSON Schema means it (Python's `$` also matches before
    a final newline)."""
    return re.compile(schema["pattern"].removeprefix("^").removesuffix("$"))


ACCOUNT = _pattern(DOCUMENT["components"]["parameters"]["AccountId"]["schema"])
STREAM_ID = _pattern(DOCUMENT["components"]["schemas"]["StreamId"])
EMAIL = _pattern(
    DOCUMENT["paths"]["/accounts"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"
    ]["email"]
)


def _patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return found + [p for value in node.values() for p in _patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in _patterns(value)]
    return []


def test_the_document_s_patterns_mean_the_same_to_python_and_to_json_schema() -> None:
    """`\\s`, `\\d` and `\\w` match other characters in Python than in ECMA-262 (the
    patterns' dialect, as schemathesis reads them): the tests below check the patterns with
    Python's `re`, so they must not use them."""
    patterns = _patterns(DOCUMENT)
    assert len(patterns) >= 5
    assert not [p for p in patterns if re.search(r"\\[sdwSDW]", p)]


def _accepts(validate: Any, value: Any) -> bool:
    try:
        validate(value)
    except Exception:
        return False
    return True


texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1)


@given(st.one_of(texts, st.sampled_from(["a b", "a\x85", "a\xa0", "a\ufeff", "a\u2028", "ok"])))
def test_the_documented_account_id_pattern_is_the_hub_s_rule(value: str) -> None:
    documented = ACCOUNT.fullmatch(value) is not None and len(value) <= MAX_ACCOUNT_ID_LENGTH
    assert documented == is_valid_account_id(value)


@given(
    st.one_of(
        texts, st.from_regex(r"[a-z\x85\xa0 ]{1,5}@[a-z\u3000]{1,5}\.[a-z]{2}", fullmatch=True)
    )
)
def test_the_documented_email_pattern_is_the_hub_s_rule(value: str) -> None:
    documented = EMAIL.fullmatch(value) is not None and len(value) <= 254
    assert documented == _accepts(normalize_email, value)


@given(st.integers(0, 2**64 + 10**6), st.integers(0, 2**64 + 10**6), st.booleans())
def test_the_documented_stream_id_pattern_is_the_hub_s_rule(ms: int, seq: int, pad: bool) -> None:
    text = f"{ms:020d}-{seq}" if pad and ms < 10**20 else f"{ms}-{seq}"
    assert (STREAM_ID.fullmatch(text) is not None) == _accepts(StreamId.parse, text)


async def test_schemathesis_finds_nothing_against_a_live_hub(
    hub_env: dict[str, str], tmp_path: Path
) -> None:
    """Every operation but the WebSocket upgrade (a protocol of its own, tested by
    test_ws.py): examples, boundary values, fuzzing and stateful sequences, with a token that
    may publish anywhere (event streams then answer 403: an endless stream would not end)."""
    hub = HubProcess(hub_env, tmp_path)
    try:
        result = await asyncio.to_thread(
            subprocess.run,
            [
                *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG)),
                *("run", hub.url("/openapi.json"), "--checks", "all"),
                *("-H", f"Authorization: Bearer {token('svc', '*')}"),
                *("--max-examples", "300", "--exclude-path", "/ws/{account_id}"),
                *("--seed", "1", "--no-color"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=tmp_path,
        )
    finally:
        await hub.drain()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    generated = re.search(r"(\d+) generated, \1 passed", result.stdout)
    assert generated is not None, result.stdout[-3000:]
    assert int(generated[1]) >= 1000
