"""benchmarks.profile_ttft lays the records of all processes on one axis and keeps only the measured call."""

from __future__ import annotations

from benchmarks.profile_ttft import median_timeline, timeline


def test_timeline_keeps_calls_inside_the_window_numbered_per_part() -> None:
    processes = {
        "client": [("open", 10.000, 10.010), ("wait", 10.012, 10.050), ("wait", 10.051, 10.090),
                   ("head_ops", 10.091, 10.092), ("wait", 9.0, 9.5)],  # before the window: another call
        "hoster 0:4": [("step", 10.020, 10.040), ("span", 10.021, 10.039), ("step", 11.5, 11.6)],
    }
    t = timeline(processes, 10.0, 10.1)
    assert [round(x, 6) for x in t[("client", "open", 0)]] == [0.0, 10.0]  # ms from the window's start
    assert set(t) == {("client", "open", 0), ("client", "wait", 0), ("client", "wait", 1),
                      ("hoster 0:4", "step", 0), ("hoster 0:4", "span", 0)}  # no profiler parts, nothing outside
    start, end = t[("client", "wait", 1)]
    assert round(start, 6) == 51.0 and round(end, 6) == 90.0


def test_median_timeline_orders_by_start_and_counts_passes() -> None:
    a = {("client", "wait", 0): (5.0, 50.0), ("hoster 0:4", "span", 0): (10.0, 40.0)}
    b = {("client", "wait", 0): (7.0, 70.0), ("hoster 0:4", "span", 0): (12.0, 44.0),
         ("hoster 0:4", "push", 0): (44.0, 45.0)}
    c = {("client", "wait", 0): (6.0, 60.0), ("hoster 0:4", "span", 0): (11.0, 42.0)}
    rows = median_timeline([a, b, c])
    assert [r[:3] for r in rows] == [("client", "wait", 0), ("hoster 0:4", "span", 0), ("hoster 0:4", "push", 0)]
    assert rows[0][3:] == (6.0, 60.0, 3)
    assert rows[2][3:] == (44.0, 45.0, 1)


def test_lean_prefill_splits_one_generate_into_embedding_blocks_and_head() -> None:
    import time

    from benchmarks.chain_trace import timed
    from benchmarks.profile_ttft import lean_prefill

    class FakeLean:
        embed = staticmethod(timed("embed", lambda: time.sleep(0.002)))
        step = staticmethod(timed("lean_step", lambda: time.sleep(0.02)))
        head = staticmethod(timed("head", lambda: time.sleep(0.004)))

        def generate(self, prompt, n):
            self.embed(), self.step(), self.head()

    parts = lean_prefill(FakeLean(), None)
    assert parts["lean_step"] >= 20 and parts["head"] >= 4 and parts["embed"] >= 2  # ms, each from one reading
    assert parts["total"] >= parts["embed"] + parts["lean_step"] + parts["head"]
