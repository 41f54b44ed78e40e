"""Output names and sample member names: made and parsed in one place each, both ways."""
from __future__ import annotations

import pytest

from actprep.schemas import naming, sample


@pytest.mark.parametrize("shard", [0, 3, 999_999, 1_000_000, 12_345_678])
def test_shard_names_round_trip(shard):
    assert naming.shard_number(naming.shard_name(shard)) == shard
    assert naming.tar_shard(naming.tar_name(shard)) == shard
    assert naming.index_shard(naming.index_name(shard)) == shard
    assert naming.work_shard(f"{naming.shard_name(shard)}/{naming.result_name(7)}") == shard


@pytest.mark.parametrize("name", ["shard-3", "shard-0000003", "shard-00000a", "shard-",
                                  "shard--00001", "shard-００００１２", "x-000003",
                                  "shard-000003.tar"])
def test_only_canonical_shard_names_parse(name):
    assert naming.shard_number(name) is None
    assert naming.tar_shard(name + ".tar") is None


def test_file_names_parse_back_and_strays_do_not():
    assert naming.result_line(naming.result_name(42)) == 42
    assert naming.result_line("42.result.json") is None
    assert naming.result_line(naming.fragment_name(42)) is None
    assert naming.traceback_shard(naming.traceback_name(5, 9)) == 5
    assert naming.traceback_shard("shard-000005.notes.txt") is None
    assert naming.tar_shard("shard-000005.tar.tmp") is None
    assert naming.index_shard("shard-000005.parquet") == 5
    assert naming.work_shard("internal/shard-000005.000000009.txt") is None
    assert naming.index_stem("shard-000005.tar") == "shard-000005.parquet"
    assert naming.SHARD_TAR_GLOB == "shard-*.tar"


def test_every_member_kind_parses_back_to_itself():
    for kind in sample.MEMBERS:
        suffix = kind.suffix(12) if kind.numbered else kind.suffix()
        assert sample.parse_suffix(suffix) == (kind, 12 if kind.numbered else None)
        assert sample.family(suffix) == kind.family
        key, rest = sample.split_member(sample.member_name("abc_01", suffix))
        assert (key, rest) == ("abc_01", suffix)


@pytest.mark.parametrize("suffix", ["rgb.12.jpg", "rgb.000012.png", "rgb.jpg",
                                    "flow_z.000001.jpg", "mfcc.npy.bak", "json.gz",
                                    "rgb.00001x.jpg"])
def test_members_outside_the_layout_do_not_parse(suffix):
    assert sample.parse_suffix(suffix) is None


def test_member_order_is_the_documented_one():
    """.cls; per frame N rgb, flow_x, flow_y, flow; then mfcc, vggish, vggish_pca, json."""
    names = [sample.CLS, sample.rgb_suffix(1), sample.flow_x_suffix(1), sample.flow_y_suffix(1),
             sample.flow_raw_suffix(1), sample.rgb_suffix(2), sample.flow_x_suffix(2),
             sample.MFCC, sample.VGGISH, sample.VGGISH_PCA, sample.JSON]
    ranks = [kind.rank(number) for kind, number in map(sample.parse_suffix, names)]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)


def test_reader_families_and_run_stages_come_from_the_table():
    assert sample.families({"rgb"}) == {"rgb", "json", "cls"}
    assert sample.families({"flow", "audio"}) == {"flow_x", "flow_y", "flow", "mfcc", "vggish",
                                                 "vggish_pca", "json", "cls"}
    assert sample.STAGES == ("rgb", "flow", "mfcc", "vggish")
    assert sample.AUDIO == {"mfcc": "mfcc.npy", "vggish": "vggish.npy",
                            "vggish_pca": "vggish_pca.npy"}
