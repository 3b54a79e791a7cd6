"""The warm side of the benchmark: one long-lived process that loads the model once and then, on command,
times the inference floor, a whole job through the in-process job runner, or the claim latency.

Commands arrive as JSON lines on stdin; each answer is one stdout line `BENCH <json>` (logs go to stderr).

    {"op": "inference", "song": PATH}      demucs.api separate_tensor on the decoded song only (the floor)
    {"op": "job", "id": ID}                push ID on the queue, Runner.run_once(): claim, download, decode,
                                           separate, encode, upload, status, log; timed from push to done
    {"op": "latency", "id": ID}            a runner blocked in BLMOVE on an empty queue; push; seconds until
                                           the job's status says `separating`
    {"op": "quit"}

Settings come from the environment, exactly as `python -m function.runner` reads them.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench.measure import in_process
from function import allocator, audio, separation
from function.clients import redis_client
from function.config import load_settings
from function.runner import Outcome, Runner


def reply(payload: dict[str, Any]) -> None:
    sys.stdout.write("BENCH " + json.dumps(payload) + "\n")
    sys.stdout.flush()


def iso_to_epoch(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class WarmBench:
    """Holds the runner (and through it the loaded model) for the life of the process."""

    def __init__(self) -> None:
        self.settings = load_settings()
        allocator.apply(self.settings.malloc_reuse)  # as the runner and the HTTP function do
        self.runner = Runner(self.settings)
        self.redis = redis_client(self.settings)
        started = time.perf_counter()
        self.separator = separation.get_separator(self.settings.demucs_model, self.settings)
        self.load_s = time.perf_counter() - started
        self._songs: dict[str, torch.Tensor] = {}

    def push(self, job_id: str) -> float:
        """Put a job message on the queue the way the REST tier does; returns the epoch time of the push."""
        pushed = time.time()
        push = self.redis.rpush if self.settings.queue_pop == "left" else self.redis.lpush
        push(self.settings.queue_key, json.dumps({"songhash": job_id}))
        return pushed

    def inference(self, song: str) -> dict[str, Any]:
        if song not in self._songs:
            self._songs[song] = audio.decode(Path(song), self.separator.samplerate, self.separator.audio_channels, 1e9)
        wav = self._songs[song]
        self.separator.update_parameter(callback=None)
        with in_process("inference") as sample:
            self.separator.separate_tensor(wav)
        return sample.to_dict() | {"audio_s": wav.shape[-1] / self.separator.samplerate}

    def job(self, job_id: str) -> dict[str, Any]:
        with in_process("stemworker_warm") as sample:
            self.push(job_id)
            result = self.runner.run_once(wait_s=5)
        sample.ok = result.outcome == Outcome.DONE
        sample.detail = {
            "outcome": str(result.outcome),
            "error": result.error,
            "status": self.runner.worker.status_for(job_id).read(),
            "stages": result.seconds,
        }
        return sample.to_dict()

    def latency(self, job_id: str) -> dict[str, Any]:
        results: list[Any] = []
        thread = threading.Thread(target=lambda: results.append(self.runner.run_once(wait_s=30)))
        thread.start()
        time.sleep(1.0)  # let the runner reach BLMOVE and block on the empty queue
        pushed = self.push(job_id)
        status = self.runner.worker.status_for(job_id)
        seen = None
        deadline = time.monotonic() + 600
        while seen is None and thread.is_alive() and time.monotonic() < deadline:
            if status.read().get("state") == "separating":
                seen = time.time() - pushed
            time.sleep(0.005)
        thread.join()
        record = status.read()
        separating_at = record.get("separating_at")
        return {
            "scenario": "claim_to_separating",
            "ok": bool(results) and results[0].outcome == Outcome.DONE,
            "latency_s": iso_to_epoch(separating_at) - pushed if separating_at else None,
            "polled_latency_s": seen,
            "status": record,
        }


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    bench = WarmBench()
    reply({"ready": True, "load_s": bench.load_s, "threads": torch.get_num_threads()})
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "quit":
            break
        try:
            if op == "inference":
                reply(bench.inference(command["song"]))
            elif op == "job":
                reply(bench.job(command["id"]))
            elif op == "latency":
                reply(bench.latency(command["id"]))
            else:
                reply({"error": f"unknown op {op!r}"})
        except Exception as err:  # report and keep serving: one failed run must not hide the others
            reply({"error": f"{type(err).__name__}: {err}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
