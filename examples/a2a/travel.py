"""A small A2A agent written only against the a2a-sdk: no agentmesh import.

``executor`` answers each message as a task: submitted, working, one text artifact, completed. It acts
on the skill the request names in its metadata (``{"skill": "plan-trip"}``, the default, or
``"book-flight"``), the field the mesh's skill-level policy authorizes, and rejects any other. A
message whose text starts with ``wait`` stays working until it is cancelled (to show CancelTask and
SubscribeToTask). The mesh file (``mesh.yaml`` beside this file) names ``executor`` and ``card.json``;
agentmesh serves it as ``lf.a2a.v1.A2AService`` with the whole server chain. The caller's verified
identity reaches the executor through the a2a-sdk's own request context
(``context.call_context.user.user_name``), so the SDK's task store keys tasks by it.
"""

from __future__ import annotations

import asyncio

from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater
from google.protobuf import json_format

__all__ = ["TravelExecutor", "executor"]


class TravelExecutor(AgentExecutor):
    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Event] = {}

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is None:
            assert context.message is not None
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        text = context.get_user_input()
        if text.startswith("wait"):
            released = self._waiting.setdefault(task.id, asyncio.Event())
            await released.wait()
            return
        who = context.call_context.user.user_name or "anonymous"
        skill = _skill(context)
        if skill == "plan-trip":
            await updater.add_artifact([new_text_part(f"itinerary for {who}: {text}")], name="itinerary")
        elif skill == "book-flight":
            await updater.add_artifact([new_text_part(f"flights booked for {who}: {text}")], name="booking")
        else:
            await updater.reject(updater.new_agent_message([new_text_part(f"no skill {skill!r} here")]))
            return
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id = context.task_id or ""
        event = self._waiting.pop(task_id, None)
        if event is not None:
            event.set()
        updater = TaskUpdater(event_queue, task_id, context.context_id or "")
        await updater.cancel()


def _skill(context: RequestContext) -> str:
    """The skill the request names: ``metadata.skill`` of the request or of its message (plan-trip if none)."""
    message = context.message
    message_metadata = json_format.MessageToDict(message.metadata) if message is not None else {}
    return str(context.metadata.get("skill") or message_metadata.get("skill") or "plan-trip")


executor = TravelExecutor()
