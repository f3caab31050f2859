"""Placement: best fit over free CPU and memory, with readable rejections."""

from ember.control.scheduler.placement import Request, WorkerCapacity, place


def worker(worker_id: str, free_cpu: float, free_mb: int, cpu: float = 8.0, mb: int = 16384):
    return WorkerCapacity(worker_id, free_cpu, free_mb, cpu, mb)


def test_the_only_fitting_worker_is_chosen() -> None:
    placement = place(Request(1.0, 1024), [worker("a", 4.0, 4096)])
    assert placement.worker_id == "a"
    assert not placement.rejections


def test_best_fit_picks_the_fullest_worker_that_fits() -> None:
    workers = [worker("empty", 8.0, 16384), worker("full", 1.5, 2048), worker("half", 4.0, 8192)]
    assert place(Request(1.0, 1024), workers).worker_id == "full"


def test_memory_counts_as_much_as_cpu_in_the_fit() -> None:
    workers = [worker("cpu-busy", 2.0, 16000), worker("memory-busy", 7.0, 1100)]
    assert place(Request(1.0, 1024), workers).worker_id == "memory-busy"


def test_a_request_using_all_that_is_free_fits() -> None:
    assert place(Request(2.0, 2048), [worker("a", 2.0, 2048)]).worker_id == "a"


def test_rejections_are_counted_with_their_reasons() -> None:
    workers = [
        worker("tiny", 0.5, 512, cpu=0.5, mb=512),
        worker("cpu", 0.5, 8192),
        worker("mem-1", 4.0, 100),
        worker("mem-2", 4.0, 200),
        worker("fits", 4.0, 4096),
    ]
    placement = place(Request(1.0, 1024), workers)
    assert placement.worker_id == "fits"
    assert placement.rejections == {
        "too small for the request": 1,
        "short of CPU": 1,
        "short of memory": 2,
    }


def test_explain_says_how_many_fit_and_why_not() -> None:
    workers = [worker("cpu", 0.5, 8192), worker("mem-1", 4.0, 100), worker("mem-2", 4.0, 100)]
    placement = place(Request(1.0, 1024), workers)
    assert placement.worker_id is None
    assert placement.explain(3) == "0 of 3 workers fit: 1 short of CPU, 2 short of memory"


def test_explain_with_no_workers() -> None:
    placement = place(Request(1.0, 1024), [])
    assert placement.worker_id is None
    assert placement.explain(0) == "no worker connected"
