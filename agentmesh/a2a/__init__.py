"""A2A (Agent2Agent protocol v1.0, ``lf.a2a.v1.A2AService``) agents in the mesh, with the a2a-sdk.

* :mod:`agentmesh.a2a.sdk`        the a2a-sdk, imported on demand (the ``a2a`` extra), one clear line if absent
* :mod:`agentmesh.a2a.adapter`    an a2a-sdk ``AgentExecutor`` served as a mesh agent, no subclass
* :mod:`agentmesh.a2a.cards`      agent cards: what the mesh states and enforces, signed by the control plane
* :mod:`agentmesh.a2a.ownership`  tasks scoped to the principal that created them, for any A2A server
"""
