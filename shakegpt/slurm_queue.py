"""A sweep's SLURM jobs watched in squeue, for hydra/launcher=slurm (WatchSlurmJobs, a Hydra callback): a job that
can never start (it asks for more than the partition's nodes have) or left SLURM's queue without a result
(scancel, or killed) ends the sweep in one line. submitit alone waits for such a job forever where the cluster
keeps no accounting: it asks sacct for the job's state, and prints `Bypassing sacct error` every few seconds.

QueueWatch is a thread that looks while submitit waits; when a job cannot end well it wakes the waiting main
thread (WatchSlurmJobs's handler of WAKE_SIGNAL, called through _thread.interrupt_main), which cancels the jobs
that can never start and ends the sweep. Jobs that run go on; `resume=true` on the sweep folder later collects
them and redoes the rest.
"""

from __future__ import annotations

import _thread
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# squeue's reasons for a pending job that no amount of waiting will start, and what each means.
NEVER_STARTS = {
    "PartitionConfig": "asks for more than the partition's nodes have",
    "PartitionNodeLimit": "asks for more nodes than the partition allows",
    "PartitionTimeLimit": "asks for more time than the partition allows",
    "BadConstraints": "asks for a combination no node offers",
}
# A job out of the queue without a result for this many looks in a row has ended without one (not requeued).
LOOKS_GONE = 2
# Not sent by anyone: the watcher calls the main thread's handler for it (_thread.interrupt_main).
WAKE_SIGNAL = signal.SIGUSR1


def submitted_jobs(submitit_dir: Path) -> set[str]:
    """The SLURM ids (<job>, or <array>_<index>) of the jobs submitit submitted from this folder: each has a
    folder holding its pickled call."""
    return {path.parent.name for path in submitit_dir.glob("*/*_submitted.pkl")}


def has_result(submitit_dir: Path, job_id: str) -> bool:
    return (submitit_dir / job_id / f"{job_id}_0_result.pkl").is_file()


def queue() -> dict[str, tuple[str, str, str]] | None:
    """The jobs in SLURM's queue, one per array task: id -> (state, reason, partition); None if squeue fails."""
    listed = subprocess.run(
        ["squeue", "--noheader", "--array", "--format=%i|%T|%r|%P"], capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:
        return None
    rows = [line.strip().split("|") for line in listed.stdout.splitlines() if line.count("|") == 3]
    return {job: (state, reason, partition) for job, state, reason, partition in rows}


def largest_node(partition: str) -> str:
    """What the partition's largest node has, as sinfo says: `N CPUs, M GB`."""
    listed = subprocess.run(
        ["sinfo", "--noheader", f"--partition={partition}", "--format=%c|%m"], capture_output=True, text=True
    )
    sizes = [line.split("|") for line in listed.stdout.split() if "|" in line]
    if listed.returncode != 0 or not sizes:
        return "unknown"
    cpus = max(int(c.rstrip("+")) for c, _ in sizes)
    memory_gb = max(int(m.rstrip("+")) for _, m in sizes) / 1024
    return f"{cpus} CPUs, {memory_gb:.0f} GB"


class QueueWatch(threading.Thread):
    """Looks at the sweep's jobs in squeue every poll_s seconds, until a job can never start or has left the
    queue without a result; then says why in `problem` and wakes the main thread."""

    def __init__(self, submitit_dir: Path, request: str, poll_s: float = 3.0) -> None:
        super().__init__(name="slurm-queue-watch", daemon=True)
        self.submitit_dir, self.request, self.poll_s = submitit_dir, request, poll_s
        self.known_before = submitted_jobs(submitit_dir)
        self.problem: str | None = None
        self.never_start: list[str] = []
        self._absent: dict[str, int] = {}
        self._done = threading.Event()

    def stop(self) -> None:
        self._done.set()

    def label(self, job_id: str) -> str:
        """The job's overrides, from the call submitit pickled for it."""
        import submitit

        try:
            return ",".join(submitit.SlurmJob(self.submitit_dir / job_id, job_id).submission().args[0])
        except Exception:  # a message's detail: the job id alone then
            return "overrides unknown"

    def run(self) -> None:
        while not self._done.wait(self.poll_s):
            self.problem = self.look()
            if self.problem is not None:
                _thread.interrupt_main(WAKE_SIGNAL)
                return

    def look(self) -> str | None:
        jobs = sorted(submitted_jobs(self.submitit_dir) - self.known_before)
        listed = queue() if jobs else None
        if listed is None:
            return None
        self.never_start = [job for job in jobs if job in listed and listed[job][1] in NEVER_STARTS]
        if self.never_start:
            job = self.never_start[0]
            _, reason, partition = listed[job]
            return (
                f"SLURM job {job} ({self.label(job)}) can never start: it {NEVER_STARTS[reason]} (each task: "
                f"{self.request}; the largest node of partition {partition}: {largest_node(partition)}; squeue: "
                f"{reason}); set hydra.launcher.cpus_per_task and mem_gb to fit, or another hydra.launcher.partition"
            )
        for job in jobs:
            gone = job not in listed and not has_result(self.submitit_dir, job)
            self._absent[job] = self._absent.get(job, 0) + 1 if gone else 0
            if self._absent[job] >= LOOKS_GONE:
                return (
                    f"SLURM job {job} ({self.label(job)}) left the queue without a result: cancelled (scancel) or "
                    f"killed; its log: {self.submitit_dir / job}; the sweep ends here, jobs still in the queue go on"
                )
        return None


class WatchSlurmJobs(Callback):
    """A Hydra callback (conf/train/hydra/default.yaml) that watches a sweep's jobs while hydra/launcher=slurm
    submits them and waits (QueueWatch); with any other launcher it does nothing."""

    def __init__(self) -> None:
        self.watch: QueueWatch | None = None
        self.previous_handler: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # submitit pickles the launcher, Hydra's callbacks included, into every job: the watch stays here.
        return {"watch": None, "previous_handler": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        launcher = config.hydra.launcher
        if not str(launcher.get("_target_", "")).endswith(".SlurmLauncher"):  # submitit's (local: LocalLauncher)
            return
        asked = ("cpus_per_task", "mem_gb", "gpus_per_node")
        request = ", ".join(f"{key}={launcher[key]}" for key in asked if launcher.get(key) is not None)
        self.watch = QueueWatch(Path(str(launcher.submitit_folder)).parent, request)  # its last part is %j
        self.previous_handler = signal.signal(WAKE_SIGNAL, self.end_the_sweep)
        self.watch.start()

    def end_the_sweep(self, signum: int, frame: Any) -> None:
        """In the main thread, which submitit keeps waiting: cancels the jobs that can never start and ends the
        sweep in one line."""
        watch = self.watch
        if watch is None or watch.problem is None:
            return  # a SIGUSR1 from elsewhere
        if watch.never_start:
            subprocess.run(["scancel", *watch.never_start], check=False)
        raise SystemExit(f"error: {watch.problem}")

    def on_multirun_end(self, config: DictConfig, **kwargs: object) -> None:
        if self.watch is not None:
            self.watch.stop()
            signal.signal(WAKE_SIGNAL, self.previous_handler)
            self.watch = None
