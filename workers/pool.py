"""The actor scheduler: a pool of `ShardGenerator` actors fed shard plans, its dead replaced.

An actor is fed shards only once it is up, so one that Ray cannot place (its node was lost, no
other node has room) holds none back: the live actors finish the job. Each live actor holds two
plans, so it never waits on the driver. A dead actor is replaced here and its unfinished shards
are queued again; shards are idempotent, so a retry writes the same bytes. Not Ray's
max_restarts: a restartable actor whose constructor argument lives in the object store (the
model) makes Ray print a warning on every job, and a replacement needs nothing more than the
reference this driver holds. With no actor up for `worker_wait` seconds, the job fails
(ClusterUnavailable).
"""

from __future__ import annotations

import sys
import time
from collections import Counter, deque
from collections.abc import Iterator

import ray
from ray.exceptions import RayActorError

from vaegen.errors import ClusterUnavailable, VaegenError
from workers.envfail import environment_failure
from workers.layout import ActorLayout
from workers.manifest import ShardRecord
from workers.sampler import ACTOR_REFUSED, SamplerConfig, ShardGenerator
from workers.spec import ShardPlan

IN_FLIGHT_PER_ACTOR = 2  # the next shard is queued at the actor while it writes this one
ACTOR_REPLACEMENTS = 3  # per pool slot; a node that keeps killing its actors fails the job
WORKER_WAIT_WARNING_S = 30.0
WAIT_POLL_S = 1.0


class ActorPool:
    """Use as a context manager: leaving it kills every actor, while Ray is still up."""

    def __init__(
        self,
        model_ref: object,
        cfg: SamplerConfig,
        layout: ActorLayout,
        pending: list[ShardPlan],
        worker_wait: float,
        judge_ref: object = None,
    ) -> None:
        self.layout, self.worker_wait = layout, worker_wait
        self.queue = deque(pending)
        self.size = min(layout.workers, len(pending))
        self.replacements_left = ACTOR_REPLACEMENTS * self.size
        self.up: list = []  # actors whose __init__ finished: the only ones fed
        self.starting: dict = {}  # __ray_ready__ ref -> actor
        self.in_flight: dict = {}  # ObjectRef -> (actor, plan)
        self.none_up_since = time.monotonic()
        self.warned = False
        self.model_ref, self.cfg, self.judge_ref = model_ref, cfg, judge_ref
        self.actor_class = ray.remote(ShardGenerator).options(
            num_cpus=layout.num_cpus,
            num_gpus=layout.num_gpus or None,
            scheduling_strategy="SPREAD",  # across nodes first: each node adds cores and disks
        )

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for actor in [*self.up, *self.starting.values()]:  # every actor not known dead
            ray.kill(actor)

    def records(self) -> Iterator[ShardRecord]:
        """Each shard's record as its actor finishes it (in completion order)."""
        for _ in range(self.size):
            self._start_actor()
        while self.queue or self.in_flight:
            ready, _ = ray.wait([*self.in_flight, *self.starting], num_returns=1,
                                timeout=WAIT_POLL_S)  # fmt: skip
            if not ready:
                self._check_waiting()
            elif ready[0] in self.starting:
                self._actor_ready(ready[0])
            else:
                record = self._shard_done(ready[0])
                if record is not None:
                    yield record

    def drain(self, timeout: float) -> Iterator[ShardRecord]:
        """After a failure: the records of the shards still in flight that end within
        `timeout` seconds; none is started. So no actor is killed while it writes a shard."""
        self.queue.clear()
        deadline = time.monotonic() + timeout
        while self.in_flight:
            left = deadline - time.monotonic()
            ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=max(left, 0))
            if not ready:
                return
            self.in_flight.pop(ready[0])
            try:
                yield ray.get(ready[0])
            except Exception:  # noqa: BLE001, S112 - the job already fails for the first error
                continue

    def _start_actor(self) -> None:
        actor = self.actor_class.remote(self.model_ref, self.cfg, self.judge_ref)
        self.starting[actor.__ray_ready__.remote()] = actor

    def _top_up(self) -> None:
        load = Counter(id(a) for a, _ in self.in_flight.values())  # one pass, not one per actor
        for actor in self.up:
            for _ in range(IN_FLIGHT_PER_ACTOR - load[id(actor)]):
                if not self.queue:
                    return
                plan = self.queue.popleft()
                self.in_flight[actor.__call__.remote(plan)] = (actor, plan)

    def _actor_ready(self, ref: object) -> None:
        actor = self.starting.pop(ref)
        try:
            ray.get(ref)
        except RayActorError as exc:
            self._replace(actor, exc, [])
            return
        self.up.append(actor)
        self._top_up()

    def _shard_done(self, ref: object) -> ShardRecord | None:
        actor, plan = self.in_flight.pop(ref)
        try:
            record = ray.get(ref)
        except RayActorError as exc:
            self._replace(actor, exc, [plan])
            return None
        self._top_up()
        return record

    def _replace(self, actor: object, exc: RayActorError, lost: list[ShardPlan]) -> None:
        # A failing __init__ (no CUDA provider, --out not visible) would fail again.
        if exc.actor_init_failed or self.replacements_left == 0:
            raise exc
        self.replacements_left -= 1
        lost += [
            self.in_flight.pop(ref)[1] for ref, (a, _) in list(self.in_flight.items()) if a is actor
        ]
        self.queue.extendleft(sorted(lost, key=lambda p: p.index, reverse=True))
        if actor in self.up:
            self.up.remove(actor)
            if not self.up:
                self.none_up_since = time.monotonic()
        self._start_actor()
        self._top_up()  # the live actors take the lost shards now, not once the new one is up

    def _check_waiting(self) -> None:
        if self.up:
            return
        waited = time.monotonic() - self.none_up_since
        unplaced = (
            f"no worker has been up for {waited:.0f} s: Ray cannot place an actor needing "
            f"{self.layout.need()} (a node was lost, or none has room)"
        )
        if waited > self.worker_wait:
            raise ClusterUnavailable(f"{unplaced}; finished shards are kept for --resume")
        if waited > WORKER_WAIT_WARNING_S and not self.warned:
            self.warned = True
            print(f"warning: {unplaced}; waiting up to --worker-wait {self.worker_wait:g} s",
                  file=sys.stderr)  # fmt: skip


def user_error(exc: BaseException) -> VaegenError | None:
    """The user's mistake behind an actor's failure (exit 2, one line), or None.

    A VaegenError raised in a shard (one too large for its format) comes back as Ray's task
    error with the original as its `cause`; an `ActorRefused` raised in an actor's __init__
    comes back only as text, marked. A full disk or a lost permission is the environment's
    (workers.envfail): exit 1, one line.
    """
    if (failure := environment_failure(exc)) is not None:
        return failure
    cause = getattr(exc, "cause", None)
    for line in str(cause if cause is not None else exc).splitlines():
        if ACTOR_REFUSED + ":" in line:
            return VaegenError(line.split(ACTOR_REFUSED + ":", 1)[1].strip())
    return cause if isinstance(cause, VaegenError) else None
