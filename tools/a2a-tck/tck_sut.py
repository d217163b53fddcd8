"""The TCK's Python SUT (a2aproject/a2a-tck python-sut/tck_core_agent/agent_executor.py), ported to a2a-sdk 1.3.0.

The TCK's own SUT is still written against the a2a-sdk 0.3 API (pydantic types, ``a2a.server.apps``,
``a2a.utils.new_task``...): it does not import with a2a-sdk 1.x, and with a2a-sdk 0.3 it speaks A2A 0.3
(``message/send``), which the TCK's current (1.0) tests do not. This is the same executor, line for line,
with the 1.0 (protobuf) types: same states, same delays (0.5 s submitted, 0.5 s working, 0.2 s), same
artifact and final message, same cancel rules. No agentmesh import: the mesh serves ``executor`` as is.
"""

from __future__ import annotations

import asyncio

from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_artifact, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.types.a2a_pb2 import TaskArtifactUpdateEvent, TaskState, TaskStatus, TaskStatusUpdateEvent
from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError

__all__ = ["TckCoreAgent", "TckCoreAgentExecutor", "executor"]


class TckCoreAgent:
    """TCK Core Agent that properly supports A2A task workflow."""

    async def invoke(self, query: str) -> str:
        if not query.strip():
            return "Hello! Please provide a message for me to respond to."
        query_lower = query.lower()
        if "hello" in query_lower or "hi" in query_lower:
            return "Hello World! Nice to meet you!"
        elif "how are you" in query_lower:
            return "I'm doing great! Thanks for asking. How can I help you today?"
        elif "goodbye" in query_lower or "bye" in query_lower:
            return "Goodbye! Have a wonderful day!"
        else:
            return f"Hello World! You said: '{query}'. Thanks for your message!"


class TckCoreAgentExecutor(AgentExecutor):
    """Complete AgentExecutor implementation that properly supports A2A tasks."""

    def __init__(self) -> None:
        self.agent = TckCoreAgent()
        self._running_tasks: set[str] = set()

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        query = context.get_user_input()
        task = context.current_task

        if not context.message:
            raise Exception("No message provided")

        if not task:
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)

        if task.status and task.status.state in (TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_CANCELED):
            return

        self._running_tasks.add(task.id)
        try:
            await event_queue.enqueue_event(TaskStatusUpdateEvent(
                status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                context_id=task.context_id, task_id=task.id))
            await asyncio.sleep(0.5)
            if task.id not in self._running_tasks:
                return

            await event_queue.enqueue_event(TaskStatusUpdateEvent(
                status=TaskStatus(state=TaskState.TASK_STATE_WORKING),
                context_id=task.context_id, task_id=task.id))
            await asyncio.sleep(0.5)
            if task.id not in self._running_tasks:
                return

            result = await self.agent.invoke(query)
            await asyncio.sleep(0.2)
            if task.id not in self._running_tasks:
                return

            await event_queue.enqueue_event(TaskArtifactUpdateEvent(
                append=False, context_id=task.context_id, task_id=task.id, last_chunk=True,
                artifact=new_text_artifact(name="response", description="Agent response to user message.",
                                           text=result)))
            await event_queue.enqueue_event(TaskStatusUpdateEvent(
                status=TaskStatus(state=TaskState.TASK_STATE_COMPLETED,
                                  message=new_text_message(result, context_id=task.context_id, task_id=task.id)),
                context_id=task.context_id, task_id=task.id))
        except Exception as e:
            await event_queue.enqueue_event(TaskStatusUpdateEvent(
                status=TaskStatus(state=TaskState.TASK_STATE_FAILED,
                                  message=new_text_message(f"Error processing request: {e}",
                                                           context_id=task.context_id, task_id=task.id)),
                context_id=task.context_id, task_id=task.id))
        finally:
            self._running_tasks.discard(task.id)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if not task:
            raise TaskNotFoundError(message="No task found to cancel")
        if task.status and task.status.state == TaskState.TASK_STATE_CANCELED:
            raise TaskNotCancelableError(message="Task is already canceled")
        if task.status and task.status.state == TaskState.TASK_STATE_COMPLETED:
            raise TaskNotCancelableError(message="Cannot cancel a completed task")
        self._running_tasks.discard(task.id)
        await event_queue.enqueue_event(TaskStatusUpdateEvent(
            status=TaskStatus(state=TaskState.TASK_STATE_CANCELED),
            context_id=task.context_id, task_id=task.id))


executor = TckCoreAgentExecutor()
