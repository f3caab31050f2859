"""Log lines in the store, read back per app after an id."""

from ember.control.store import LogLine


def line(app_id: str, data: str) -> LogLine:
    return LogLine(0, app_id, "square", "ta-1", 1, data, 3.0)


async def test_append_returns_the_lines_with_increasing_ids(store) -> None:
    stored = await store.logs.append([line("ap-1", "a\n"), line("ap-1", "b\n")])
    assert [s.data for s in stored] == ["a\n", "b\n"]
    assert 0 < stored[0].log_id < stored[1].log_id


async def test_append_nothing_stores_nothing(store) -> None:
    assert await store.logs.append([]) == []
    assert await store.logs.after("ap-1", 0) == []


async def test_after_reads_one_apps_lines_past_an_id_in_order(store) -> None:
    first, _, third = await store.logs.append(
        [line("ap-1", "a\n"), line("ap-2", "other\n"), line("ap-1", "c\n")]
    )
    assert await store.logs.after("ap-1", 0) == [first, third]
    assert await store.logs.after("ap-1", first.log_id) == [third]


async def test_after_stops_at_the_limit(store) -> None:
    await store.logs.append([line("ap-1", str(i)) for i in range(5)])
    assert [x.data for x in await store.logs.after("ap-1", 0, limit=2)] == ["0", "1"]
