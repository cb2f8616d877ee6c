"""The tier report's two pure pieces: which tier a test is in, and how its time reads."""

from tests.tiers import minutes, tier


def test_a_test_belongs_to_the_directory_under_tests() -> None:
    assert tier("tests/e2e/test_kube_client.py::test_a[x/y]") == "e2e"
    assert tier("tests/unit/test_uris.py::TestX::test_y") == "unit"
    assert tier("tests/conftest.py::test_z") == "other"
    assert tier("bench/test_x.py::test_y") == "other"


def test_time_reads_in_minutes_past_one() -> None:
    assert minutes(12.34) == "12.3 s"
    assert minutes(754.2) == "12 min 34 s"
    assert minutes(60) == "1 min 00 s"
