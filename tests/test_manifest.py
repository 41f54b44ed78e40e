"""Tests for manifest parsing (Kinetics, Moments in Time, generic) and row checks."""
from __future__ import annotations

import json

import pytest

from actprep.pipelines import plansort
from actprep.schemas.labels import parse_class_list
from actprep.schemas.manifest import (
    MAX_KEY_LENGTH,
    ManifestError,
    ManifestRow,
    VideoIndex,
    check_key,
    check_rows,
    check_sorted,
    contained_path,
    iter_kinetics,
    iter_manifest,
    kinetics_key,
    path_key,
    read_generic,
    read_kinetics,
    read_manifest,
    read_mit,
)

K_HEADER = "label,youtube_id,time_start,time_end,split\n"
K400_2017_HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"
K_TEST_HEADER = "youtube_id,time_start,time_end,split\n"


# --------------------------------------------------------------------------- keys and paths


def test_kinetics_key_zero_pads_to_six_digits():
    assert kinetics_key("-aBc_DeF-12", 10, 20) == "-aBc_DeF-12_000010_000020"
    assert kinetics_key("abc", 0, 999999) == "abc_000000_999999"


@pytest.mark.parametrize("rel, key", [
    ("abseiling/getty-abseiling-video-id538442.mp4", "abseiling__getty-abseiling-video-id538442"),
    ("adult+female+singing/yt-1a2B.x.mp4", "adult+female+singing__yt-1a2B_x"),
    ("a b/c d.webm", "a_b__c_d"),
])
def test_path_key_has_no_dots_or_slashes(rel, key):
    assert path_key(rel) == key
    assert check_key(key) is None


def test_check_key_reasons():
    assert check_key("abc_000001_000002") is None
    assert "empty" in check_key("")
    assert "characters" in check_key("a.b")
    assert "characters" in check_key("a/b")
    assert str(MAX_KEY_LENGTH) in check_key("x" * (MAX_KEY_LENGTH + 1))
    assert check_key("x" * MAX_KEY_LENGTH) is None


@pytest.mark.parametrize("path, absolute_ok, expected", [
    ("a/b.mp4", False, "a/b.mp4"),
    ("./a/../b.mp4", False, "b.mp4"),
    ("../x.mp4", False, None),
    ("a/../../x.mp4", False, None),
    ("..", False, None),
    ("/abs/x.mp4", False, None),
    ("/abs/x.mp4", True, "/abs/x.mp4"),
    ("gs://bucket/x.mp4", False, None),
    ("gs://bucket/x.mp4", True, "gs://bucket/x.mp4"),
    ("../x.mp4", True, None),
])
def test_contained_path(path, absolute_ok, expected):
    assert contained_path(path, absolute_ok) == expected


def test_video_index_by_stem_ignores_non_video_files():
    idx = VideoIndex(["/a/x.mp4", "b/x.txt", "c/y.MKV", "z.mp4.part"])
    assert "a/x.mp4" in idx
    assert dict(idx.by_stem) == {"x": ["a/x.mp4"], "y": ["c/y.MKV"]}
    assert idx.find_stem("x") == ["a/x.mp4"] and idx.find_stem("z") == []


# --------------------------------------------------------------------------- Kinetics


def _kinetics_videos():
    return VideoIndex([
        "-aBc_DeF-12_000010_000020.mp4",                       # flat
        "abseiling/_x-y_Z_00001_000005_000015.mkv",            # per class
        "train/passing American football (in game)/Q_w-e_000000_000010.webm",  # per split/class
        "val/AvI_clip_00_000030_000040.avi",                   # per split
        "README.txt",
    ])


def test_kinetics_real_header_and_video_layouts():
    text = (
        K_HEADER
        + "abseiling,-aBc_DeF-12,10,20,train\n"
        + "abseiling,_x-y_Z_00001,5,15,train\n"
        + '"passing American football (in game)",Q_w-e,0,10,train\n'
        + "\"dancing 'macarena'\",AvI_clip_00,30,40,val\n"
    )
    rows = read_kinetics(text, "kinetics400/train.csv", _kinetics_videos())
    assert [r.line for r in rows] == [2, 3, 4, 5]
    assert [r.key for r in rows] == [
        "-aBc_DeF-12_000010_000020", "_x-y_Z_00001_000005_000015",
        "Q_w-e_000000_000010", "AvI_clip_00_000030_000040"]
    assert [r.path for r in rows] == [
        "-aBc_DeF-12_000010_000020.mp4",
        "abseiling/_x-y_Z_00001_000005_000015.mkv",
        "train/passing American football (in game)/Q_w-e_000000_000010.webm",
        "val/AvI_clip_00_000030_000040.avi"]
    assert [r.label for r in rows] == [
        "abseiling", "abseiling", "passing American football (in game)", "dancing 'macarena'"]
    assert [r.split for r in rows] == ["train", "train", "train", "val"]
    assert all(r.error is None for r in rows)


def test_kinetics_quoted_comma_in_class_name():
    text = K_HEADER + '"hitting baseball, slowly",-aBc_DeF-12,10,20,train\n'
    (row,) = read_kinetics(text, "k.csv", _kinetics_videos())
    assert row.label == "hitting baseball, slowly"
    assert row.error is None


def test_kinetics_400_2017_is_cc_column():
    text = K400_2017_HEADER + "abseiling,-aBc_DeF-12,10,20,train,0\n"
    (row,) = read_kinetics(text, "kinetics_train.csv", _kinetics_videos())
    assert (row.key, row.label, row.split, row.error) == (
        "-aBc_DeF-12_000010_000020", "abseiling", "train", None)


def test_kinetics_test_split_without_label():
    text = K_TEST_HEADER + "-aBc_DeF-12,10,20,test\n"
    (row,) = read_kinetics(text, "test.csv", _kinetics_videos())
    assert row.label is None
    assert row.split == "test"
    assert row.path == "-aBc_DeF-12_000010_000020.mp4"


def test_kinetics_float_times_that_are_whole_seconds():
    (row,) = read_kinetics(K_HEADER + "a,-aBc_DeF-12,10.0,20.0,train\n", "k.csv",
                           _kinetics_videos())
    assert row.key == "-aBc_DeF-12_000010_000020"


def test_kinetics_missing_and_ambiguous_videos():
    videos = VideoIndex(["train/dup_id_0000_000001_000002.mp4",
                         "val/dup_id_0000_000001_000002.webm"])
    text = K_HEADER + "a,gone_id_000,1,2,train\n" + "a,dup_id_0000,1,2,train\n"
    missing, ambiguous = read_kinetics(text, "k.csv", videos)
    assert missing.path is None
    assert "video not found" in missing.error
    assert "gone_id_000_000001_000002" in missing.error
    assert ambiguous.path is None
    assert "ambiguous" in ambiguous.error
    assert "train/dup_id_0000_000001_000002.mp4" in ambiguous.error
    assert "val/dup_id_0000_000001_000002.webm" in ambiguous.error


def test_kinetics_line_numbers_are_physical_with_blank_lines_and_crlf():
    text = (K_HEADER + "\n" + "a,-aBc_DeF-12,10,20,train\n" + "\n\n"
            + "b,_x-y_Z_00001,5,15,train\n").replace("\n", "\r\n")
    rows = read_kinetics(text, "k.csv", _kinetics_videos())
    assert [r.line for r in rows] == [3, 6]
    assert [r.label for r in rows] == ["a", "b"]


def test_kinetics_missing_header_column():
    text = "label,youtube_id,time_start,split\na,b,1,train\n"
    with pytest.raises(ManifestError) as exc:
        read_kinetics(text, "bad_header.csv", _kinetics_videos())
    assert "bad_header.csv:1" in str(exc.value)
    assert "time_end" in str(exc.value)


def test_kinetics_wrong_field_count_names_file_and_line():
    text = K_HEADER + "a,-aBc_DeF-12,10,20,train\n\nb,xyz,1,2\n"
    with pytest.raises(ManifestError) as exc:
        read_kinetics(text, "k400/val.csv", _kinetics_videos())
    assert "k400/val.csv:4" in str(exc.value)


@pytest.mark.parametrize("value", ["ten", "", "1.5", "-3"])
def test_kinetics_bad_time_names_file_and_line(value):
    text = K_HEADER + "a,-aBc_DeF-12,10,20,train\n" + f"a,zzz,{value},20,train\n"
    with pytest.raises(ManifestError) as exc:
        read_kinetics(text, "train.csv", _kinetics_videos())
    assert "train.csv:3" in str(exc.value)
    assert "time_start" in str(exc.value)


@pytest.mark.parametrize("value", ["nan", "inf", "1e400"])
def test_kinetics_nan_or_infinite_time_is_a_manifest_error(value):
    text = K_HEADER + f"a,zzz,1,{value},train\n"
    with pytest.raises(ManifestError, match=r"train\.csv:2"):
        read_kinetics(text, "train.csv", _kinetics_videos())


def test_empty_manifest():
    with pytest.raises(ManifestError, match="empty.csv"):
        read_kinetics("", "empty.csv", _kinetics_videos())


# --------------------------------------------------------------------------- Moments in Time


MIT_VIDEOS = [
    "abseiling/getty-abseiling-video-id538442.mp4",               # at root/rel
    "training/adult+female+singing/yt-Xb1_c-Z_1.mp4",             # release layout, train
    "validation/adult+female+singing/flickr-3-4-5-9-2633456917_4.mp4",
    "validation/barking/giphy-ZxYw.mp4",
]


def test_mit_training_rows_found_at_root_and_under_training():
    text = ("abseiling/getty-abseiling-video-id538442.mp4,abseiling,3,0\n"
            "adult+female+singing/yt-Xb1_c-Z_1.mp4,adult+female+singing,2,1\n"
            "barking/giphy-ZxYw.mp4,barking,3,0\n")
    rows = read_manifest("mit", text, "Moments_in_Time/trainingSet.csv", VideoIndex(MIT_VIDEOS))
    assert [r.line for r in rows] == [1, 2, 3]
    assert [r.split for r in rows] == ["train"] * 3
    assert rows[0].path == "abseiling/getty-abseiling-video-id538442.mp4"
    assert rows[1].path == "training/adult+female+singing/yt-Xb1_c-Z_1.mp4"
    # only under validation/: not the training split's video
    assert rows[2].path is None and "video not found" in rows[2].error
    assert [r.label for r in rows] == ["abseiling", "adult+female+singing", "barking"]
    keys = [r.key for r in rows]
    assert len(set(keys)) == len(keys)
    assert all("." not in k and "/" not in k and check_key(k) is None for k in keys)


def test_mit_validation_split_from_file_name():
    text = ("adult+female+singing/flickr-3-4-5-9-2633456917_4.mp4,adult+female+singing,3,0\n"
            "\n"
            "adult+female+singing/yt-Xb1_c-Z_1.mp4,adult+female+singing,3,0\n")
    rows = read_manifest("mit", text, "/data/mit/validationSet.csv", VideoIndex(MIT_VIDEOS))
    assert [r.line for r in rows] == [1, 3]
    assert [r.split for r in rows] == ["val", "val"]
    assert rows[0].path == "validation/adult+female+singing/flickr-3-4-5-9-2633456917_4.mp4"
    assert rows[0].key == "adult+female+singing__flickr-3-4-5-9-2633456917_4"
    assert rows[0].error is None
    assert "video not found" in rows[1].error  # under training/ only


def test_mit_split_override():
    text = "barking/giphy-ZxYw.mp4,barking,3,0\n"
    (row,) = read_manifest("mit", text, "mylist.csv", VideoIndex(MIT_VIDEOS), split="val")
    assert row.split == "val"
    assert row.path == "validation/barking/giphy-ZxYw.mp4"


def test_mit_too_few_fields():
    with pytest.raises(ManifestError, match=r"trainingSet\.csv:2"):
        read_mit("a/b.mp4,a,3,0\nonly_a_path.mp4\n", "trainingSet.csv", VideoIndex([]), "train")


def test_mit_categories_and_unknown_label():
    categories = parse_class_list("barking,2\nabseiling,0\nadult+female+singing,1\n",
                                  "moments_categories.txt")
    assert categories.names == ("abseiling", "adult+female+singing", "barking")
    text = ("abseiling/getty-abseiling-video-id538442.mp4,abseiling,3,0\n"
            "abseiling/getty-abseiling-video-id538442.mp4,yawning,3,0\n")
    rows = read_mit(text, "trainingSet.csv", VideoIndex(MIT_VIDEOS), "train")
    checked = check_rows(rows, set(categories.names), "moments_categories.txt")
    assert checked[0].error is None
    # same key again: the duplicate is reported before the label
    assert "duplicate key" in checked[1].error
    rows = read_mit("abseiling/getty-abseiling-video-id538442.mp4,yawning,3,0\n",
                    "trainingSet.csv", VideoIndex(MIT_VIDEOS), "train")
    (bad,) = check_rows(rows, set(categories.names), "moments_categories.txt")
    assert "unknown label" in bad.error
    assert "yawning" in bad.error and "moments_categories.txt" in bad.error


def test_kinetics_and_mit_need_a_video_root():
    with pytest.raises(ManifestError, match="video-root"):
        read_manifest("kinetics", K_HEADER, "k.csv", None)
    with pytest.raises(ManifestError, match="video-root"):
        read_manifest("mit", "a/b.mp4,a,1,1\n", "trainingSet.csv", None)
    with pytest.raises(ValueError, match="unknown dataset"):
        read_manifest("ucf101", "", "x.csv", None)


# --------------------------------------------------------------------------- generic


GENERIC_VIDEOS = VideoIndex(["clips/a.mp4", "clips/b c.mkv", "x.mp4"])


def test_generic_csv_with_and_without_split():
    text = "path,label,split\nclips/a.mp4,jump,train\n\nclips/b c.mkv,run,val\n"
    rows = read_generic(text, "list.csv", GENERIC_VIDEOS)
    assert [(r.line, r.key, r.path, r.label, r.split, r.error) for r in rows] == [
        (2, "clips__a", "clips/a.mp4", "jump", "train", None),
        (4, "clips__b_c", "clips/b c.mkv", "run", "val", None),
    ]
    rows = read_generic("path,label\nx.mp4,\nclips/missing.mp4,jump\n", "list.csv",
                        GENERIC_VIDEOS)
    assert rows[0].label is None and rows[0].split is None and rows[0].error is None
    assert "video not found" in rows[1].error


def test_generic_jsonl():
    text = ('{"path": "clips/a.mp4", "label": "jump", "split": "train"}\n'
            "\n"
            '{"path": "x.mp4"}\n')
    rows = read_generic(text, "list.jsonl", GENERIC_VIDEOS)
    assert [(r.line, r.key, r.path, r.label, r.split) for r in rows] == [
        (1, "clips__a", "clips/a.mp4", "jump", "train"),
        (3, "x", "x.mp4", None, None),
    ]


@pytest.mark.parametrize("path", ["../x.mp4", "/abs/x.mp4", "clips/../../x.mp4",
                                  "gs://other/x.mp4"])
def test_generic_paths_escaping_the_root(path):
    rows = read_generic(f"path,label\n{path},jump\n", "list.csv", GENERIC_VIDEOS)
    (row,) = rows
    assert row.path is None
    assert "escapes the video root" in row.error
    assert check_key(row.key) is None  # still a usable key for the failure record


def test_generic_without_root_paths_stay_in_the_manifests_folder(tmp_path):
    """Without --video-root the manifest's folder is the root: an absolute path inside it
    is kept as given, one outside it (by its real path), a URI or a '..' out of it are
    failures of their row."""
    folder = tmp_path / "m"
    (folder / "videos").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    inside, outside = folder / "videos" / "x.mp4", tmp_path / "elsewhere" / "y.mp4"
    text = (f"path,label\n{inside},jump\n{outside},run\ngs://bucket/v/y.webm,run\n"
            f"rel/z.avi,run\n{folder}/videos/../../elsewhere/y.mp4,run\n../m/w.mp4,run\n")
    rows = read_manifest("generic", text, str(folder / "list.csv"), None)
    assert [(r.path, r.error) for r in rows[:2]] == [
        (str(inside), None), (str(outside), f"escapes the video root: {outside}")]
    assert rows[0].key == path_key(str(inside).lstrip("/"))
    assert rows[3].path == "rel/z.avi" and rows[3].error is None  # missing: found when opened
    for row in (rows[2], rows[5]):
        assert row.path is None and "escapes the video root (without --video-root: the " \
            f"manifest's folder {folder})" in row.error
    assert rows[4].error == f"escapes the video root: {outside}"


def test_generic_without_root_on_an_object_store_checks_the_text():
    text = ("path,label\ngs://b/m/v/x.mp4,a\nv/y.mp4,a\ngs://b/m/v/../../o/x.mp4,a\n"
            "gs://b/mm/x.mp4,a\n/local/x.mp4,a\ngs://c/m/x.mp4,a\n")
    rows = read_manifest("generic", text, "gs://b/m/list.csv", None)
    assert [(r.path, r.error) for r in rows[:2]] == [("gs://b/m/v/x.mp4", None),
                                                      ("v/y.mp4", None)]
    assert all("escapes the video root" in r.error and r.path is None for r in rows[2:])


@pytest.mark.parametrize("path, root, expected", [
    ("/r/a/x.mp4", "/r", "/r/a/x.mp4"),
    ("/r/a/../x.mp4", "/r", "/r/x.mp4"),
    ("/r/../x.mp4", "/r", None),
    ("/rr/x.mp4", "/r", None),
    ("gs://b/r/x.mp4", "gs://b/r", "gs://b/r/x.mp4"),
    ("gs://b/r/../x.mp4", "gs://b/r", None),
    ("gs://b/../../x.mp4", "gs://b", None),
    ("gs://c/r/x.mp4", "gs://b/r", None),
    ("gs://b/r/x.mp4", "/r", None),
])
def test_contained_path_under_a_root(path, root, expected):
    assert contained_path(path, True, root) == expected


def test_generic_bad_json_line():
    text = '{"path": "x.mp4"}\n\n{"path": "clips/a.mp4",\n'
    with pytest.raises(ManifestError) as exc:
        read_generic(text, "data/list.jsonl", GENERIC_VIDEOS)
    assert "data/list.jsonl:3" in str(exc.value)
    with pytest.raises(ManifestError, match=r"l\.jsonl:1"):
        read_generic('["x.mp4"]\n', "l.jsonl", GENERIC_VIDEOS)


def test_generic_empty_path_and_missing_column():
    with pytest.raises(ManifestError, match=r"l\.csv:3"):
        read_generic("path,label\nx.mp4,a\n ,b\n", "l.csv", GENERIC_VIDEOS)
    with pytest.raises(ManifestError, match=r"l\.csv:1"):
        read_generic("file,label\nx.mp4,a\n", "l.csv", GENERIC_VIDEOS)


@pytest.mark.parametrize("record, message", [
    ({"path": 3}, "'path' is a number, expected a string"),
    ({"path": None}, "'path' is null, expected a string"),
    ({"path": ["a.mp4"]}, "'path' is an array, expected a string"),
    ({"path": "x.mp4", "label": 3}, "'label' is a number, expected a string or null"),
    ({"path": "x.mp4", "label": True}, "'label' is a boolean, expected a string or null"),
    ({"path": "x.mp4", "label": {"name": "a"}}, "'label' is an object, expected a string"),
    ({"path": "x.mp4", "split": 1}, "'split' is a number, expected a string or null"),
])
def test_generic_jsonl_fields_of_the_wrong_type(record, message):
    """A JSON Lines field of another type is an error naming file and line, not turned
    into a string (a label 3 would become the class '3')."""
    text = '{"path": "x.mp4", "label": null, "split": null}\n\n' + json.dumps(record) + "\n"
    with pytest.raises(ManifestError) as caught:
        read_generic(text, "data/l.jsonl", GENERIC_VIDEOS)
    assert str(caught.value).startswith("data/l.jsonl:3: ") and message in str(caught.value)


UTF8_TEXT = "path,label\nclips/a.mp4,café ☕\n"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1 << 20])
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("bad, line", [
    (b"x.mp4,caf\xe9\n", 3),           # Latin-1
    (b"x.mp4,\xe2\x98\n", 3),          # a sequence cut by the newline
    (b"\n\nx.mp4,\xff\n", 5),           # after blank lines
    (b"x.mp4,a\r\ny.mp4,\xc3", 4),     # cut at the end of the file
])
def test_non_utf8_manifest_names_the_line(monkeypatch, tmp_path, chunk, bom, bad, line):
    """A byte that is not UTF-8 stops the streamed manifest with FILE:LINE, whatever the
    read size and wherever a read ends; the manifest's hash fails alike."""
    monkeypatch.setattr(plansort, "CHUNK", chunk)
    path = tmp_path / "list.csv"
    path.write_bytes(bom + UTF8_TEXT.encode() + bad)
    with pytest.raises(ManifestError, match=rf"list\.csv:{line}: not UTF-8 \(0x"), \
            plansort.manifest_lines(str(path)) as lines:
        list(iter_manifest("generic", lines, str(path), GENERIC_VIDEOS))
    with pytest.raises(ManifestError, match=rf"list\.csv:{line}: not UTF-8"):
        plansort.text_sha256(str(path))


def test_read_manifest_split_override_applies_to_every_row():
    text = "path,label,split\nclips/a.mp4,jump,train\nx.mp4,run,val\n"
    rows = read_manifest("generic", text, "l.csv", GENERIC_VIDEOS, split="test")
    assert [r.split for r in rows] == ["test", "test"]


# --------------------------------------------------------------------------- check_rows


def test_check_rows_duplicates_bad_keys_earlier_errors_and_nothing_dropped():
    rows = [
        ManifestRow(2, "k1", "k1.mp4", "a", "train"),
        ManifestRow(3, "bad.key", "bad.key.mp4", "a", "train"),
        ManifestRow(5, "k2", None, "a", "train", "video not found: k2"),
        ManifestRow(6, "k1", "k1.mp4", "b", "train"),
        ManifestRow(7, "k3", "k3.mp4", None, "test"),
        ManifestRow(8, "k2", "k2.mp4", "a", "train"),
    ]
    out = check_rows(rows, None)
    assert len(out) == len(rows)
    assert [r.line for r in out] == [2, 3, 5, 6, 7, 8]
    assert out[0] == rows[0]
    assert "characters" in out[1].error and "bad.key" in out[1].error
    assert out[2].error == "video not found: k2"
    assert "duplicate key k1" in out[3].error and "line 2" in out[3].error
    assert out[4].error is None
    # the first row of a key wins even when it failed
    assert "duplicate key k2" in out[5].error and "line 5" in out[5].error


def test_check_rows_unknown_labels_against_class_list():
    rows = [ManifestRow(2, "k1", "k1.mp4", "abseiling", None),
            ManifestRow(3, "k2", "k2.mp4", "juggling", None),
            ManifestRow(4, "k3", "k3.mp4", None, "test")]
    out = check_rows(rows, {"abseiling"}, "classes.txt")
    assert out[0].error is None
    assert "unknown label 'juggling'" in out[1].error and "classes.txt" in out[1].error
    assert out[2].error is None  # unlabelled rows are fine


def test_kinetics_id_with_a_dot_is_flagged():
    videos = VideoIndex(["ab.cd_000001_000002.mp4"])
    rows = check_rows(read_kinetics(K_HEADER + "a,ab.cd,1,2,train\n", "k.csv", videos), None)
    assert rows[0].error and "ab.cd_000001_000002" in rows[0].error


def test_check_sorted_streams_check_rows_in_key_order():
    rows = [
        ManifestRow(2, "k1", "k1.mp4", "a", "train"),
        ManifestRow(3, "bad.key", "bad.key.mp4", "a", "train"),
        ManifestRow(4, "bad.key", "bad.key.mp4", "zz", "train"),
        ManifestRow(5, "k2", None, "a", "train", "video not found: k2"),
        ManifestRow(6, "k1", "k1.mp4", "b", "train"),
        ManifestRow(7, "k3", "k3.mp4", None, "test"),
        ManifestRow(8, "k2", "k2.mp4", "a", "train"),
        ManifestRow(9, "k1", "k1.mp4", "zz", "train"),
        ManifestRow(10, "k4", "k4.mp4", "zz", "train"),
    ]
    def order(row: ManifestRow) -> tuple[str, int]:
        return row.key, row.line

    for known in (None, {"a", "b"}):
        want = sorted(check_rows(rows, known, "c.txt"), key=order)
        assert list(check_sorted(sorted(rows, key=order), known, "c.txt")) == want


def test_parsers_stream_lines():
    """A row comes out as soon as its line is read: nothing waits for the whole file."""
    def lines():
        yield K_HEADER
        yield "abseiling,-aBc_DeF-12,10,20,train\n"
        raise AssertionError("read past the first row")

    row = next(iter_kinetics(lines(), "k.csv", _kinetics_videos()))
    assert row.key == "-aBc_DeF-12_000010_000020" and row.error is None
    rows = iter_manifest("kinetics", iter([K_HEADER, "a,-aBc_DeF-12,10,20,train\n"]), "k.csv",
                         _kinetics_videos(), split="test")
    assert [r.split for r in rows] == ["test"]
    with pytest.raises(ManifestError, match="video-root"):
        iter_manifest("mit", iter([]), "trainingSet.csv", None)  # at once, not when iterated


@pytest.mark.parametrize("dataset, text, hint", [
    ("mit", "label,youtube_id,time_start,time_end,split\nabseiling,x,0,10,train\n",
     "it is a kinetics manifest's header: use --dataset kinetics"),
    ("mit", "path,label\na.mp4,x\n", "it is a generic manifest's header: use --dataset generic"),
    ("kinetics", "path,label\na.mp4,x\n", "use --dataset generic"),
    ("kinetics", "a/b.mp4,a,3,0\n", "looks like a Moments in Time row"),
    ("generic", "a/b.mp4,a,3,0\n", "use --dataset mit"),
])
def test_a_manifest_of_another_kind_is_named(dataset, text, hint):
    """A manifest given with the wrong --dataset stops at its first line, saying which
    kind it looks like (a Kinetics header read as a Moments in Time row would otherwise
    become a failed video)."""
    with pytest.raises(ManifestError, match="m.csv:1: ") as caught:
        read_manifest(dataset, text, "m.csv", VideoIndex([]))
    assert hint in str(caught.value)
