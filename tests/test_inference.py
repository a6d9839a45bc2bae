"""The inference worker: windows of different rooms due within one tick share a model call; results come back in
submission order on the loop; a failing window reaches its own room only; stop cancels what is still waiting."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from sendreturn_mood.model.inference import InferenceWorker, Job
from sendreturn_mood.model.contract import Prediction
from sendreturn_mood.audio.pipeline import Window


class FakeModel:
    """Records the batch size of every call; a window whose first value is NaN fails."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[int] = []
        self.delay = delay
        self.release = threading.Event()
        self.release.set()

    def predict(self, batch: np.ndarray) -> Prediction:
        self.release.wait(5)
        self.calls.append(len(batch))
        if np.isnan(batch[:, 0, 0]).any():
            raise ValueError("bad window")
        moods = np.tile(batch[:, 0, 0:1], (1, 4))
        return Prediction(moods=moods, genres=None)


def window(value: float) -> Window:
    return Window(np.full((4, 8), value, dtype=np.float32), stream_time=1.0)


async def run_jobs(worker: InferenceWorker, values: list[float], owners: list[str]) -> list[Job]:
    return [await worker.submit(Job(owner, window(v), 0.0)) for v, owner in zip(values, owners)]


async def test_windows_due_within_a_tick_share_one_call_and_keep_their_order() -> None:
    model, got = FakeModel(), []
    worker = InferenceWorker(model, lambda job, result: got.append((job.owner, float(result.prediction.moods[0]))), tick=0.05)  # type: ignore[arg-type]
    worker.start()
    try:
        jobs = await run_jobs(worker, [1.0, 2.0, 3.0], ["a", "b", "c"])
        await asyncio.wait_for(jobs[-1].done, 5)
    finally:
        await worker.stop()
    assert model.calls == [3]
    assert got == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert worker.depth == 0


async def test_a_failing_window_fails_alone() -> None:
    model, got = FakeModel(), []
    worker = InferenceWorker(model, lambda job, result: got.append((job.owner, result.error is None)), tick=0.05)  # type: ignore[arg-type]
    worker.start()
    try:
        jobs = await run_jobs(worker, [1.0, float("nan"), 3.0], ["a", "b", "c"])
        await asyncio.wait_for(jobs[-1].done, 5)
    finally:
        await worker.stop()
    assert got == [("a", True), ("b", False), ("c", True)]


async def test_results_of_one_owner_in_one_batch_are_delivered_a_loop_round_apart() -> None:
    """A source faster than real time can have several windows in one batch: its sender gets a turn in between."""
    model, rounds = FakeModel(), []
    loop_round = {"n": 0}

    async def ticker() -> None:
        while True:
            loop_round["n"] += 1
            await asyncio.sleep(0)

    worker = InferenceWorker(model, lambda job, result: rounds.append(loop_round["n"]), tick=0.05)  # type: ignore[arg-type]
    worker.start()
    t = asyncio.get_running_loop().create_task(ticker())
    try:
        jobs = await run_jobs(worker, [1.0, 2.0, 3.0], ["a", "a", "b"])
        await asyncio.wait_for(jobs[-1].done, 5)
    finally:
        t.cancel()
        await worker.stop()
    assert model.calls == [3]
    assert rounds[0] < rounds[1] == rounds[2]  # a's second window waited a round; b's came with it


async def test_stop_cancels_what_is_still_waiting() -> None:
    model = FakeModel()
    model.release.clear()  # the model hangs until released
    worker = InferenceWorker(model, lambda job, result: None, tick=0.0)  # type: ignore[arg-type]
    worker.start()
    jobs = await run_jobs(worker, [1.0, 2.0], ["a", "b"])
    model.release.set()
    await worker.stop()
    assert all(j.done.done() for j in jobs)
    assert worker.depth == 0
