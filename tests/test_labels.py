"""Label schema: task schemes, PI-CAI parsing edge cases, the annotation JSON."""

from __future__ import annotations

import numpy as np
import pytest
from proqual.errors import ValidationError
from proqual.labels import (
    SCHEMES,
    case_pirads_from_lesions,
    get_scheme,
    isup_from_gleason,
    parse_cspca,
    parse_isup,
    parse_lesion_field,
    validate_annotation,
)
from proqual.study import StudyLabels


@pytest.mark.parametrize(
    ("scheme", "values", "expected"),
    [
        ("pirads_ge4", [1, 3, 4, 5], [0, 0, 1, 1]),
        ("pirads_ge3", [2, 3, 5], [0, 1, 1]),
        ("pirads_4class", [1, 2, 3, 4, 5], [0, 0, 1, 2, 3]),
        ("pirads_5class", [1, 5], [0, 4]),
        ("cspca", [0, 1, 2, 5], [0, 0, 1, 1]),
        ("isup_gg", [0, 3, 5], [0, 3, 5]),
    ],
)
def test_scheme_encoding(scheme, values, expected):
    s = get_scheme(scheme)
    assert [s.encode(v) for v in values] == expected
    assert s.encode(None) is None


def test_scheme_from_study_labels_and_ranges():
    assert get_scheme("pirads_ge4").encode(StudyLabels(pirads=4)) == 1
    assert get_scheme("cspca").encode(StudyLabels(pirads=4)) is None  # not biopsied
    with pytest.raises(ValidationError, match="pirads: must be 1..5"):
        get_scheme("pirads_ge4").encode(0)
    with pytest.raises(ValidationError, match="unknown scheme 'x'; valid: pirads_ge4"):
        get_scheme("x")


def test_binary_prob_sums_positive_classes():
    p = np.array([0.1, 0.2, 0.3, 0.4])  # 4-class PI-RADS
    assert get_scheme("pirads_4class").binary_prob(p) == pytest.approx(0.7)
    gg = np.array([0.3, 0.2, 0.1, 0.1, 0.2, 0.1])
    assert get_scheme("isup_gg").binary_prob(gg) == pytest.approx(0.5)
    assert all(s.n_classes == len(s.class_names) for s in SCHEMES.values())


def test_lesion_fields():
    assert parse_lesion_field("3,4,N/A") == [3, 4, None]
    assert parse_lesion_field("N/A") == []
    assert case_pirads_from_lesions("3,5,N/A") == 5
    assert case_pirads_from_lesions("N/A,N/A") is None  # all N/A lesions
    assert case_pirads_from_lesions([]) is None
    with pytest.raises(ValidationError, match="lesion_PIRADS: 'x' is not a number"):
        parse_lesion_field("3,x")
    with pytest.raises(ValidationError, match="lesion_PIRADS: 7 is outside"):
        parse_lesion_field("7")


@pytest.mark.parametrize(
    ("gs", "gg"),
    [
        ("3+3", 1),
        ("3+4", 2),
        ("4+3", 3),
        ("4+4", 4),
        ("3+5", 4),
        ("4+5", 5),
        ("5+5", 5),
        ("0+0", 0),
        ("N/A", None),
    ],
)
def test_gleason_to_isup(gs, gg):
    assert isup_from_gleason(gs) == gg


def test_isup_and_cspca_cells():
    assert parse_isup("0") == 0  # ISUP 0 is a value, not missing
    assert parse_isup("N/A") is None
    assert parse_cspca("YES") is True and parse_cspca("0") is False and parse_cspca("") is None
    with pytest.raises(ValidationError, match="case_csPCa: 'maybe' is not YES/NO"):
        parse_cspca("maybe")
    with pytest.raises(ValidationError, match="lesion_GS"):
        isup_from_gleason("seven")


def test_annotation_valid_and_labels():
    ann = validate_annotation(
        {
            "annotator": " dr a ",
            "pirads": 4,
            "isup": "not_biopsied",
            "piqual": {"T2W": 3, "study": 2},
            "lesions": [{"position_lps": [1, 2, 3], "pirads": 4, "zone": "PZ"}],
        }
    )
    assert ann.annotator == "dr a" and ann.created
    lab = ann.to_study_labels()
    assert lab.pirads == 4 and lab.isup is None and lab.piqual == {"T2W": 3, "study": 2}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"annotator": "a", "pirads": 6}, "pirads"),
        ({"annotator": "a", "isup": 7}, "isup"),
        ({"annotator": "a", "piqual": {"T2W": 4}}, "piqual.T2W"),
        ({"annotator": "a", "piqual": {"XX": 1}}, "piqual.XX"),
        ({"annotator": "a", "lesions": [{"position_lps": [1, 2, float("nan")]}]}, "lesions.0.position_lps"),
        ({"annotator": "a", "lesions": [{"position_lps": [1, 2, 3], "zone": "Q"}]}, "lesions.0.zone"),
        ({"pirads": 3}, "annotator"),
        ({"annotator": "   "}, "annotator"),
        ({"annotator": "a", "surprise": 1}, "surprise"),
        ({"annotator": "a", "comment": "x" * 2001}, "comment"),
        ({"annotator": "a", "created": "yesterday"}, "created"),
    ],
)
def test_annotation_errors_name_the_field(data, field):
    with pytest.raises(ValidationError) as info:
        validate_annotation(data)
    assert info.value.field == field


@pytest.mark.parametrize("raw", [b"\xff\xfe", "{not json", "[1, 2]"])
def test_annotation_not_an_object(raw):
    with pytest.raises(ValidationError, match="annotation: "):
        validate_annotation(raw)


def test_strictness_fixes():
    assert case_pirads_from_lesions(["3", "N/A"]) == 3
    assert get_scheme("cspca").encode("not_biopsied") is None
    with pytest.raises(ValidationError, match="must be an integer"):
        get_scheme("pirads_ge4").encode(True)
    for bad in (
        {"annotator": "a", "pirads": True},
        {"annotator": "a", "pirads": "4"},
        {"annotator": "a", "isup": True},
    ):
        with pytest.raises(ValidationError):
            validate_annotation(bad)
