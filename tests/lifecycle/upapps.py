"""Agent apps for the ``agentmesh up`` tests, imported by the child processes (their PYTHONPATH holds this
directory): a relay whose calls take as long as the request asks, and that dies on request."""

from __future__ import annotations

import asyncio
import os

import grpc

from agentmesh import MeshNode
from agentmesh.v1 import agent_pb2, agent_pb2_grpc


class Hop(agent_pb2_grpc.AgentServicer):
    """Forwards to ``metadata["next"]`` (a comma list) and answers with every hop's name; waits
    ``metadata["wait_<name>"]`` seconds at this hop first. ``metadata["exit_<name>"]`` ends this process
    at once with that status (a crash mid-call). With ``metadata["mark"]`` (a directory), the file
    ``<id>-<name>`` there says the call has reached this hop. An onward call's failure is not caught: what the
    caller sees is the mesh's doing, as for any handler that does not catch it.

    While the file named by ``UPTEST_CRASH_FLAG`` exists, the app exits with status 3 when it is built
    (after its member connected): a child that keeps crashing."""

    def __init__(self, node: MeshNode) -> None:
        flag = os.environ.get("UPTEST_CRASH_FLAG")
        if flag and os.path.exists(flag):
            print(f"{node.name}: cannot start: {flag} exists", flush=True)
            os._exit(3)
        self.node = node

    async def Invoke(self, request: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        me = self.node.name
        if "mark" in request.metadata:  # the test waits for this file: the call has reached this hop
            with open(os.path.join(request.metadata["mark"], f"{request.id}-{me}"), "w"):
                pass
        if f"exit_{me}" in request.metadata:
            os._exit(int(request.metadata[f"exit_{me}"]))
        wait = float(request.metadata.get(f"wait_{me}", "0"))
        if wait:
            await asyncio.sleep(wait)  # the work this hop does (the test asked for it to take this long)
        out = [agent_pb2.Part(text=me)]
        nxt = [n for n in request.metadata.get("next", "").split(",") if n]
        if nxt:
            onward = agent_pb2.Task(id=request.id, input=request.input,
                                    metadata={**request.metadata, "next": ",".join(nxt[1:])})
            res = await self.node.stub(nxt[0], agent_pb2_grpc.AgentStub).Invoke(onward)
            out.extend(res.output)
        return agent_pb2.TaskResult(task_id=request.id, status=agent_pb2.TASK_STATUS_COMPLETED, output=out)

