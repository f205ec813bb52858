"""A listing's strings validate the same from Python values and from JSON text.

The metadata's strings (``item_id``, ``title``, ``condition``) and the display data's names
are stripped; the display data's values (``extra``) are kept exactly as the fetcher gave
them, however the fetcher handed them over.
"""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import kuya_store as ks

_padded = st.builds(
    lambda left, core, right: left + core + right,
    st.sampled_from(["", " ", "  ", "\t", "\n "]),
    # Inner spaces and marks as card titles have them; the padding is what is stripped.
    st.text(alphabet=string.ascii_letters + string.digits + " #|-./é", max_size=12),
    st.sampled_from(["", " ", "\t ", "\r\n"]),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | _padded,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_padded, inner, max_size=3),
    max_leaves=8,
)


def _both(data: dict[str, Any]) -> tuple[Any, Any]:
    def outcome(build: Any) -> Any:
        try:
            return build().model_dump()
        except ValidationError as exc:
            return [(e["loc"], e["type"]) for e in exc.errors()]

    return (
        outcome(lambda: ks.Listing.model_validate(data)),
        outcome(lambda: ks.Listing.model_validate_json(json.dumps(data))),
    )


@settings(max_examples=300, deadline=None)
@given(_padded, _padded, st.none() | _padded, st.dictionaries(_padded, _json, max_size=4))
def test_python_and_json_validation_agree(
    item_id: str, title: str, condition: str | None, extra: dict[str, Any]
) -> None:
    data = {"item_id": item_id, "title": title, "price": "3.50", "condition": condition}
    python, text = _both({**data, "extra": extra})
    assert python == text
    if isinstance(python, dict):
        # The display data's values untouched, whitespace included; its names stripped.
        assert python["extra"] == {key.strip(): value for key, value in extra.items()}
        assert python["item_id"] == item_id.strip() and python["title"] == title.strip()


def test_metadata_strings_are_stripped_and_display_strings_kept() -> None:
    data = {
        "item_id": "  v1|123  ",
        "title": "\t2023 Topps Chrome #1 \n",
        "price": " 4.25 ",
        "condition": " Used ",
        "extra": {" image_url": " https://i.example/x.jpg ", "badges": [" Top rated "]},
    }
    python, text = _both(data)
    assert python == text
    assert (python["item_id"], python["title"], python["condition"]) == (
        "v1|123",
        "2023 Topps Chrome #1",
        "Used",
    )
    assert python["extra"] == {"image_url": " https://i.example/x.jpg ", "badges": [" Top rated "]}


def test_blank_metadata_is_still_refused_by_name() -> None:
    python, text = _both({"item_id": "   ", "title": "t", "price": "1.00"})
    assert python == text == [(("item_id",), "string_too_short")]
