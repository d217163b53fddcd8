"""Tasks scoped to the principal that created them (A2A v1.0, section 13.1), for any A2A server.

The stock a2a-sdk gRPC server serves every caller as one anonymous user: whoever may call an agent could
list, read, cancel, subscribe to and continue every task. The mesh knows the verified principal of each
call, so it keeps, per agent, the owner of each task (learned from the responses that reveal a task) and
answers a request that names someone else's task exactly as the a2a-sdk answers one naming a task that
does not exist (NOT_FOUND, its message): existence does not leak.

The decisions are pure (plain values in, a decision out; no I/O, no a2a-sdk import)::

    named_tasks(method, request)      the tasks a request names (every A2AService method is in RULES)
    task_key(tenant, task_id)         the store's key: a task id within its tenant
    revealed_task(response)           the task a response reveals (SendMessage, SendStreamingMessage)
    decide(principal, owner, named)   "allow" | "not-found"
    own_page(response, principal, owners)   a ListTasks page with the caller's tasks only

Fail closed: a task whose owner the mesh does not know (never seen, or forgotten: evicted, expired) is
refused, and so is a caller without a principal; SendMessage naming such a task id too (A2A servers make
task ids: a client names one only to continue a task, and the mesh cannot tell "never seen" from
"forgotten", so letting it through would let anyone who learnt the id of a forgotten task take it over).
A task whose owner was forgotten is NOT_FOUND for everyone, its owner included: keep owners at least as
long as the agent keeps tasks (``a2a.max_tasks``, ``a2a.task_ttl``), and share them through Redis between
replicas.

ListTasks, the paging caveat: the agent pages over everyone's tasks and the mesh removes the others' tasks
from each page, so a page may hold fewer than ``page_size`` tasks (even none) while ``next_page_token``
says there are more: page until the token is empty. ``page_size`` and ``total_size`` count the tasks
returned (the agent's total counts everyone's, and is not passed on). The page token is the agent's, passed
unchanged (the a2a-sdk's encodes the id and time of the last task of the unfiltered page).

The stores (who owns which task of one agent) take the same two calls::

    MemoryTaskOwners   one replica: LRU bounded by max_tasks, idle expiry after task_ttl, injected clock
    RedisTaskOwners    replicas share it (rate_limits.backend: redis://...): one key per task, TTL task_ttl;
                       Redis down, slow or failing: Unavailable, whatever rate_limits.failure_mode says
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import quote

from agentmesh.a2a.sdk import A2A_SERVICE
from agentmesh.clock import Clock
from agentmesh.config import A2AConfig, RateLimitConfig
from agentmesh.errors import ConfigError, NotFound, Unavailable
from agentmesh.redisclient import connect

__all__ = [
    "A2A_PREFIX",
    "NOT_FOUND_MESSAGE",
    "REVIEWED",
    "RULES",
    "Decision",
    "MemoryTaskOwners",
    "Named",
    "RedisTaskOwners",
    "TaskOwners",
    "build_task_owners",
    "decide",
    "method_name",
    "named_tasks",
    "not_found",
    "own_page",
    "revealed_task",
    "task_key",
]

log = logging.getLogger(__name__)

A2A_PREFIX = f"/{A2A_SERVICE}/"
#: the a2a-sdk's answer for a task that does not exist (``a2a.utils.errors.TaskNotFoundError``)
NOT_FOUND_MESSAGE = "Task not found"

Decision = Literal["allow", "not-found"]


@dataclass(frozen=True, slots=True)
class Named:
    """A task a request names, and what the a2a-sdk answers when it does not exist."""

    task_id: str
    message: str = NOT_FOUND_MESSAGE


def _id(request: Any) -> tuple[Named, ...]:
    return (Named(request.id),)


def _task_id(request: Any) -> tuple[Named, ...]:
    return (Named(request.task_id),)


def _message(request: Any) -> tuple[Named, ...]:
    message = request.message
    refs = tuple(Named(ref) for ref in message.reference_task_ids)  # another's task as context: refused too
    if not message.task_id:
        return refs  # a new task
    # the a2a-sdk's answer (1.3.0, DefaultRequestHandler = DefaultRequestHandlerV2) for an unknown task id
    own = Named(message.task_id, f"Task {message.task_id} not found")
    return (own, *refs)


def _none(request: Any) -> tuple[Named, ...]:
    return ()


#: every method of lf.a2a.v1.A2AService (short name) -> the tasks its request names. A method not here
#: (a later version of the protocol) is refused: nobody has said how it is scoped.
RULES: dict[str, Callable[[Any], tuple[Named, ...]]] = {
    "SendMessage": _message,
    "SendStreamingMessage": _message,
    "GetTask": _id,
    "CancelTask": _id,
    "SubscribeToTask": _id,
    "CreateTaskPushNotificationConfig": _task_id,
    "GetTaskPushNotificationConfig": _task_id,
    "ListTaskPushNotificationConfigs": _task_id,
    "DeleteTaskPushNotificationConfig": _task_id,
    "ListTasks": _none,  # its response is filtered (own_page)
    "GetExtendedAgentCard": _none,
}
#: the methods whose responses the mesh reads: the ones that reveal new tasks, and ListTasks
REVIEWED = frozenset({"SendMessage", "SendStreamingMessage", "ListTasks"})


def method_name(method: str) -> str | None:
    """``GetTask`` for ``/lf.a2a.v1.A2AService/GetTask``; None for a method of another service."""
    return method[len(A2A_PREFIX):] if method.startswith(A2A_PREFIX) else None


def named_tasks(method: str, request: Any) -> tuple[Named, ...]:
    """The tasks a request to A2AService method ``method`` (short name) names; KeyError for a method
    not in :data:`RULES`. An empty id is named as it is (and refused: no task has it)."""
    return RULES[method](request)


def revealed_task(response: Any) -> str | None:
    """The task a SendMessageResponse or StreamResponse reveals (its task, status or artifact update, or
    a message that belongs to a task), or None."""
    which = response.WhichOneof("payload")
    if which == "task":
        return str(response.task.id) or None
    if which in ("status_update", "artifact_update"):
        return str(getattr(response, which).task_id) or None
    if which == "message":
        return str(response.message.task_id) or None
    return None


def task_key(tenant: str, task_id: str) -> str:
    """The store's key of a task: its id within its tenant (A2A ``tenant``; task ids need only be unique
    within one, and replicas may make them independently). Length-prefixed, so no tenant can spell
    another's key."""
    return f"{len(tenant)}:{tenant}/{task_id}"


def decide(principal: str | None, owner: str | None, named: Named) -> Decision:
    """May ``principal`` touch the task ``named``, whose recorded owner is ``owner`` (None: unknown)?"""
    if principal is None:
        return "not-found"
    return "allow" if owner is not None and owner == principal else "not-found"


def not_found(named: Named) -> NotFound:
    """The refusal: the a2a-sdk's own answer for a task that does not exist."""
    return NotFound(named.message)


def own_page(response: Any, principal: str | None, owners: Sequence[str | None]) -> Any:
    """A copy of a ListTasksResponse with only ``principal``'s tasks (``owners[i]`` owns ``tasks[i]``);
    ``page_size`` and ``total_size`` count what is returned (see the paging caveat above)."""
    kept = [t for t, owner in zip(response.tasks, owners, strict=True) if principal is not None and owner == principal]
    page = type(response)()
    page.CopyFrom(response)
    del page.tasks[:]
    page.tasks.extend(kept)
    page.page_size = page.total_size = len(kept)
    return page


# ---------------------------------------------------------------------------------------------- stores
class TaskOwners(Protocol):
    """Who owns which task of one agent. Touching (a read by its owner, a claim) keeps an owner alive."""

    async def owners(self, task_ids: Sequence[str], principal: str | None) -> list[str | None]:
        """The recorded owner of each task (None: unknown); those owned by ``principal`` are touched."""
        ...

    async def claim(self, task_id: str, principal: str) -> str:
        """Records ``principal`` as the owner unless the task has one; returns the owner recorded."""
        ...

    async def aclose(self) -> None: ...


class MemoryTaskOwners:
    """Owners in this process: the ``max_tasks`` most recently touched, each until ``ttl`` s idle, and at
    most ``per_principal`` per principal (beyond it a principal's own least recently touched task is
    forgotten, so one principal creating tasks cannot push everyone else's owners out)."""

    def __init__(self, *, max_tasks: int = 100_000, ttl: float = 7 * 86400.0, per_principal: int = 1000,
                 clock: Clock = time.monotonic) -> None:
        if max_tasks < 1 or ttl <= 0 or per_principal < 1:
            raise ConfigError("a2a: max_tasks and max_tasks_per_principal must be at least 1, task_ttl positive")
        self.max_tasks = max_tasks
        self.ttl = ttl
        self.per_principal = per_principal
        self.clock = clock
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()  # least recently touched first
        self._mine: dict[str, OrderedDict[str, None]] = {}  # each principal's tasks, least recently touched first

    def __len__(self) -> int:
        return len(self._owners)

    def _drop(self, task: str) -> None:
        owner, _ = self._owners.pop(task)
        mine = self._mine[owner]
        del mine[task]
        if not mine:
            del self._mine[owner]

    def _get(self, task: str, principal: str | None, now: float) -> str | None:
        hit = self._owners.get(task)
        if hit is None:
            return None
        owner, seen = hit
        if now - seen >= self.ttl:
            self._drop(task)
            return None
        if owner == principal:
            self._owners[task] = (owner, now)
            self._owners.move_to_end(task)
            self._mine[owner].move_to_end(task)
        return owner

    async def owners(self, task_ids: Sequence[str], principal: str | None) -> list[str | None]:
        now = self.clock()
        return [self._get(t, principal, now) for t in task_ids]

    async def claim(self, task_id: str, principal: str) -> str:
        now = self.clock()
        owner = self._get(task_id, principal, now)
        if owner is not None:
            return owner
        self._owners[task_id] = (principal, now)
        mine = self._mine.setdefault(principal, OrderedDict())
        mine[task_id] = None
        if len(mine) > self.per_principal:
            self._drop(next(iter(mine)))
        while self._owners:  # the idle ones first (the oldest touched are first), then beyond max_tasks
            oldest, (_, seen) = next(iter(self._owners.items()))
            if len(self._owners) <= self.max_tasks and now - seen < self.ttl:
                break
            self._drop(oldest)
        return principal

    async def aclose(self) -> None:
        self._owners.clear()
        self._mine.clear()


#: KEYS = task keys; ARGV = principal, ttl (s). The owner of each (false: none); the principal's touched.
LOOKUP_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner == ARGV[1] then redis.call('EXPIRE', key, ARGV[2]) end
  out[i] = owner
end
return out
"""
#: KEYS[1] = task key; ARGV = principal, ttl (s). The owner now recorded.
CLAIM_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return ARGV[1]
end
if owner == ARGV[1] then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return owner
"""


class RedisTaskOwners:
    """Owners in Redis, shared by the replicas of one agent: key ``<prefix>{<agent>}:<task id>`` (the
    agent's keys share a cluster slot), the owner as value, expiring ``ttl`` s after its last touch.
    Redis errors never leave this class: a failed or slow (over ``timeout``) step is Unavailable."""

    def __init__(self, url: str, agent: str, *, ttl: float = 7 * 86400.0, key_prefix: str = "agentmesh:a2a:",
                 timeout: float = 0.25) -> None:
        self._prefix = f"{key_prefix}{{{quote(agent, safe='')}}}:"
        self._ttl = str(max(1, math.ceil(ttl)))
        self._timeout = timeout
        try:
            self._redis, self._errors = connect(url, timeout, decode_responses=True)
        except ValueError:
            raise ConfigError("rate_limits.backend: invalid Redis URL") from None  # never echo it: a password
        self._lookup = self._redis.register_script(LOOKUP_SCRIPT)
        self._claim = self._redis.register_script(CLAIM_SCRIPT)
        self._down = False

    def key(self, task_id: str) -> str:
        return self._prefix + task_id

    async def _run(self, script: Any, keys: list[str], principal: str) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                result = await script(keys=keys, args=[principal, self._ttl])
        except self._errors as e:
            if not self._down:
                self._down = True
                log.warning("task-owner store unavailable (%s); A2A task calls fail closed", type(e).__name__)
            raise Unavailable("task-owner store unavailable") from None
        if self._down:
            self._down = False
            log.info("task-owner store is reachable again")
        return result

    async def owners(self, task_ids: Sequence[str], principal: str | None) -> list[str | None]:
        if not task_ids:
            return []
        # a principal is never empty: "" touches nothing
        raw = await self._run(self._lookup, [self.key(t) for t in task_ids], principal or "")
        return [o if isinstance(o, str) else None for o in raw]

    async def claim(self, task_id: str, principal: str) -> str:
        return str(await self._run(self._claim, [self.key(task_id)], principal))

    async def aclose(self) -> None:
        try:
            await self._redis.aclose()
        except self._errors:
            pass


def build_task_owners(limits: RateLimitConfig, a2a: A2AConfig | None, *, agent: str,
                      clock: Clock = time.monotonic) -> TaskOwners:
    """The store of ``agent``: in Redis when ``rate_limits.backend`` is a Redis URL, else in memory;
    ``a2a`` None (an agent serving A2A without an ``a2a:`` block) takes A2AConfig's defaults."""
    defaults = A2AConfig(card="") if a2a is None else a2a
    if limits.backend == "memory":
        return MemoryTaskOwners(max_tasks=defaults.max_tasks, ttl=defaults.task_ttl,
                                per_principal=defaults.max_tasks_per_principal, clock=clock)
    return RedisTaskOwners(limits.backend, agent, ttl=defaults.task_ttl)
