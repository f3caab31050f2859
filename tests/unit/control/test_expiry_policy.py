"""The expiry policy on plain data: when a call is finished, when its rows may go, which blobs go."""

import dataclasses

import pytest

from ember.config import output_retention_s
from ember.control.blobs import StoredBlob
from ember.control.expiry import (
    BLOB_GRACE_MAX_S,
    BLOB_GRACE_MIN_S,
    DELIVERED_GRACE_S,
    RetentionPolicy,
    blobs_to_delete,
    expires_at,
    is_finished,
)
from ember.control.store import CallFacts
from ember.proto import api_pb2

DAY = 24 * 3600.0
POLICY = RetentionPolicy(retention_s=7 * DAY)
NOW = 100 * DAY
REMOTE, MAP, SPAWN = api_pb2.CALL_KIND_REMOTE, api_pb2.CALL_KIND_MAP, api_pb2.CALL_KIND_SPAWN


def call(**changes: object) -> CallFacts:
    """A finished-looking spawn of a live app, created an hour ago, changed by `changes`."""
    base = CallFacts(
        call_id="fc-" + "0" * 16,
        kind=SPAWN,
        created_at=NOW - 3600,
        inputs_complete=True,
        cancelled=False,
        finished_at=None,
        expires_at=None,
        app_stopped_at=None,
        has_work=False,
    )
    return dataclasses.replace(base, **changes)


def test_a_call_with_work_left_is_not_finished() -> None:
    assert not is_finished(call(has_work=True), NOW, POLICY)
    assert not is_finished(call(has_work=True, app_stopped_at=NOW - DAY), NOW, POLICY)


def test_a_complete_call_with_no_work_left_is_finished() -> None:
    assert is_finished(call(), NOW, POLICY)


def test_a_map_still_being_fed_is_not_finished_while_its_inputs_are_all_done() -> None:
    assert not is_finished(call(kind=MAP, inputs_complete=False), NOW, POLICY)


@pytest.mark.parametrize(
    "changes",
    [{"cancelled": True}, {"app_stopped_at": NOW - 60}, {"created_at": NOW - 7 * DAY}],
    ids=["cancelled", "app-stopped", "silent-for-a-retention"],
)
def test_a_map_that_can_get_no_more_inputs_is_finished(changes: dict[str, object]) -> None:
    assert is_finished(call(kind=MAP, inputs_complete=False, **changes), NOW, POLICY)


def test_a_spawned_call_is_kept_the_whole_retention_even_once_its_app_stopped() -> None:
    for changes in ({}, {"app_stopped_at": NOW}, {"cancelled": True}):
        assert expires_at(call(**changes), NOW, POLICY) == NOW + 7 * DAY


def test_a_remote_or_map_of_a_live_app_is_kept_the_whole_retention() -> None:
    assert expires_at(call(kind=REMOTE), NOW, POLICY) == NOW + 7 * DAY
    assert expires_at(call(kind=MAP), NOW, POLICY) == NOW + 7 * DAY


def test_a_remote_or_map_goes_a_grace_after_its_app_stopped() -> None:
    stopped = NOW + DAY  # the app outlived the call by a day
    assert expires_at(call(kind=REMOTE, app_stopped_at=stopped), NOW, POLICY) == (
        stopped + DELIVERED_GRACE_S
    )
    assert expires_at(call(kind=MAP, app_stopped_at=stopped), NOW, POLICY) == (
        stopped + DELIVERED_GRACE_S
    )


def test_a_call_finishing_after_its_app_stopped_still_gets_the_grace() -> None:
    assert expires_at(call(kind=MAP, app_stopped_at=NOW - DAY), NOW, POLICY) == (
        NOW + DELIVERED_GRACE_S
    )


def test_a_map_its_reader_cancelled_goes_a_grace_after_it_finished() -> None:
    assert expires_at(call(kind=MAP, cancelled=True), NOW, POLICY) == NOW + DELIVERED_GRACE_S


def test_the_delivered_grace_never_outlasts_the_retention() -> None:
    short = RetentionPolicy(retention_s=60.0)
    assert expires_at(call(kind=MAP, app_stopped_at=NOW), NOW, short) == NOW + 60.0


@pytest.mark.parametrize(
    ("retention_s", "grace_s"),
    [(60.0, BLOB_GRACE_MIN_S), (6 * 3600.0, 6 * 3600.0), (7 * DAY, BLOB_GRACE_MAX_S)],
)
def test_the_blob_grace_follows_the_retention_within_an_hour_and_a_day(
    retention_s: float, grace_s: float
) -> None:
    assert RetentionPolicy(retention_s).blob_grace_s == grace_s


def test_only_old_blobs_no_row_names_are_deleted() -> None:
    old, fresh, named = (
        StoredBlob("bl-old", NOW - 2 * DAY, 10),
        StoredBlob("bl-fresh", NOW - 60, 10),
        StoredBlob("bl-named", NOW - 2 * DAY, 10),
    )
    assert blobs_to_delete([old, fresh, named], {"bl-named"}, NOW - DAY) == [old]


def test_the_retention_is_read_from_the_environment_with_a_week_by_default(monkeypatch) -> None:
    monkeypatch.delenv("EMBER_OUTPUT_RETENTION_S", raising=False)
    assert output_retention_s() == 7 * DAY
    monkeypatch.setenv("EMBER_OUTPUT_RETENTION_S", "3600")
    assert output_retention_s() == 3600.0


@pytest.mark.parametrize("bad", ["soon", "0", "-5", "nan", "inf"])
def test_a_retention_that_is_not_a_positive_number_is_refused_by_name(monkeypatch, bad) -> None:
    monkeypatch.setenv("EMBER_OUTPUT_RETENTION_S", bad)
    with pytest.raises(ValueError, match="EMBER_OUTPUT_RETENTION_S"):
        output_retention_s()
