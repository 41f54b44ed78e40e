"""Tests for label maps and class lists."""
from __future__ import annotations

import json

import pytest

from actprep.schemas.labels import LabelError, LabelMap, parse_class_list


def test_from_labels_sorted_unique_none_ignored():
    labels = LabelMap.from_labels(
        ["zumba", None, "abseiling", "passing American football (in game)", "abseiling",
         "dancing 'macarena'", None])
    assert labels.names == ("abseiling", "dancing 'macarena'",
                            "passing American football (in game)", "zumba")
    assert len(labels) == 4
    assert labels.index("abseiling") == 0
    assert labels.index("zumba") == 3
    assert "zumba" in labels
    assert None not in labels
    assert "juggling" not in labels
    with pytest.raises(KeyError):
        labels.index("juggling")
    assert labels.source == "sorted manifest labels"


def test_from_labels_empty():
    labels = LabelMap.from_labels([None, None])
    assert labels.names == () and len(labels) == 0


def test_json_round_trip_keeps_order_and_unicode():
    labels = LabelMap(("zumba", "café au lait", "abseiling"), "class list k.txt")
    text = labels.to_json()
    doc = json.loads(text)
    assert doc == {"source": "class list k.txt",
                   "classes": ["zumba", "café au lait", "abseiling"]}
    assert "café" in text  # not \u-escaped
    back = LabelMap.from_json(text)
    assert back == labels
    assert back.index("abseiling") == 2


def test_duplicates_rejected():
    with pytest.raises(LabelError, match="'a'.*twice.*my source"):
        LabelMap(("a", "b", "a"), "my source")


def test_plain_class_list():
    text = "abseiling\r\n\r\nair drumming\n  passing American football (in game)  \n"
    labels = parse_class_list(text, "k400_classes.txt")
    assert labels.names == ("abseiling", "air drumming", "passing American football (in game)")
    assert labels.source == "class list k400_classes.txt"


def test_plain_class_list_with_commas_in_names():
    labels = parse_class_list("hitting baseball, slowly\nabseiling\n", "c.txt")
    assert labels.names == ("hitting baseball, slowly", "abseiling")


def test_indexed_class_list_any_line_order():
    text = "barking,2\nabseiling,0\n\nadult+female+singing, 1\n"
    labels = parse_class_list(text, "moments_categories.txt")
    assert labels.names == ("abseiling", "adult+female+singing", "barking")
    assert labels.index("barking") == 2


def test_indexed_class_list_name_with_comma():
    labels = parse_class_list("a, b,1\nc,0\n", "m.txt")
    assert labels.names == ("c", "a, b")


def test_indexed_gap_rejected():
    with pytest.raises(LabelError) as exc:
        parse_class_list("a,0\nb,2\n", "moments_categories.txt")
    assert "moments_categories.txt" in str(exc.value)
    with pytest.raises(LabelError, match="moments_categories.txt"):
        parse_class_list("a,1\nb,2\n", "moments_categories.txt")


def test_indexed_duplicate_index_rejected_with_line():
    with pytest.raises(LabelError) as exc:
        parse_class_list("a,0\nb,1\n\nc,1\n", "moments_categories.txt")
    assert "moments_categories.txt:4" in str(exc.value)
    assert "'b'" in str(exc.value)


def test_duplicate_names_rejected_with_file_name():
    with pytest.raises(LabelError, match="classes.txt"):
        parse_class_list("a\nb\na\n", "classes.txt")
    with pytest.raises(LabelError, match="moments_categories.txt"):
        parse_class_list("a,0\na,1\n", "moments_categories.txt")


def test_empty_class_list():
    with pytest.raises(LabelError, match="c.txt"):
        parse_class_list("\n  \n", "c.txt")


def test_indexed_list_with_a_line_missing_its_index_is_rejected():
    with pytest.raises(LabelError, match="moments_categories.txt:2"):
        parse_class_list("abseiling,0\nadult+female+singing\nbarking,2\n",
                         "moments_categories.txt")
