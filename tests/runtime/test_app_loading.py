"""Loading an agent's ``app:`` whatever its proto layout: a ``.proto`` that declares only services.

Its ``*_pb2_grpc`` module imports the messages' modules, never its own ``*_pb2`` (which holds the
service descriptor), so the servicer's service must be found without that module already imported.
The protos are compiled at test time (nothing generated is committed).
"""

from __future__ import annotations

import asyncio
import importlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshkit import write_mesh

from agentmesh.configfile import load_config
from agentmesh.errors import ConfigError
from agentmesh.runtime.agent import run_agent
from agentmesh.runtime.app import load_app, registrations
from agentmesh.runtime.control import start_control
from agentmesh.runtime.node import MeshNode

PROTOS = Path(__file__).parent / "protos_services_only"
PKG = "servicesonly.v1"
SERVICE_PB2 = f"{PKG}.service_pb2"
SERVICE = "servicesonly.v1.Echoer"

APP = '''
from google.protobuf import empty_pb2

from servicesonly.v1 import messages_pb2, service_pb2_grpc


class Echoer(service_pb2_grpc.EchoerServicer):
    async def Say(self, request, context):
        return messages_pb2.Answer(text=f"said {request.text}", n=1)

    async def Count(self, request, context):
        for n in range(request.count):
            yield messages_pb2.Answer(text=request.text, n=n)

    async def Ping(self, request, context):
        return empty_pb2.Empty()
'''


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """service.proto and messages.proto compiled into a temp dir on sys.path, with an app module."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("services_only")
    include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
                      "servicesonly/v1/messages.proto", "servicesonly/v1/service.proto"])
    assert rc == 0, "protoc failed"
    (out / "servicesonly_app.py").write_text(APP)
    # a copy of the _pb2_grpc module alone, without its _pb2 beside it (moved, or vendored on its own)
    (out / "grpconly").mkdir()
    shutil.copy(out / "servicesonly/v1/service_pb2_grpc.py", out / "grpconly" / "service_pb2_grpc.py")
    (out / "grpconly_app.py").write_text(APP.replace("from servicesonly.v1 import messages_pb2, service_pb2_grpc",
                                                     "from servicesonly.v1 import messages_pb2\n"
                                                     "from grpconly import service_pb2_grpc"))
    sys.path.insert(0, str(out))
    try:
        yield out
    finally:
        sys.path.remove(str(out))
        for name in [n for n in sys.modules if n.split(".")[0] in ("servicesonly", "servicesonly_app", "grpconly",
                                                                   "grpconly_app")]:
            del sys.modules[name]


def forget_service_pb2() -> None:
    """As in a fresh process: nothing has imported service_pb2 (the descriptor pool may keep the file)."""
    sys.modules.pop(SERVICE_PB2, None)


def load(spec: str) -> type:
    forget_service_pb2()
    cls = load_app(spec)
    assert SERVICE_PB2 not in sys.modules, "the premise: the app's imports never load service_pb2"
    return cls


def test_services_only_proto_registers_its_service(generated: Path) -> None:
    cls = load("servicesonly_app:Echoer")
    grpc_module: ModuleType = importlib.import_module(f"{PKG}.service_pb2_grpc")
    regs = registrations(cls)
    assert [(r.add, r.service) for r in regs] == [(grpc_module.add_EchoerServicer_to_server, SERVICE)]
    # the service's descriptor is in the default pool now (reflection, the bridge and `call` find it)
    assert sys.modules[SERVICE_PB2].DESCRIPTOR.services_by_name["Echoer"].full_name == SERVICE


def test_grpc_module_without_its_pb2_still_names_the_full_service(generated: Path) -> None:
    """No importable sibling *_pb2: the service name comes from what add_*_to_server registers."""
    cls = load_app("grpconly_app:Echoer")
    regs = registrations(cls)
    assert [r.service for r in regs] == [SERVICE]


def test_a_class_without_a_generated_base_is_still_refused(generated: Path) -> None:
    class Plain:
        async def Say(self, request: object, context: object) -> None: ...

    with pytest.raises(ConfigError, match="Plain implements no generated gRPC servicer"):
        registrations(Plain)


async def test_services_only_agent_serves_through_the_mesh(generated: Path, tmp_path: Path) -> None:
    """``agentmesh agent`` with ``app:`` and ``descriptors:`` of a services-only proto: it starts, the
    mesh chain serves unary and server-streaming calls, and health reports the full service name."""
    forget_service_pb2()
    path = write_mesh(tmp_path, {"echoer": {"app": "servicesonly_app:Echoer", "descriptors": [SERVICE_PB2],
                                            "roles": ["echoer"]}},
                      policy=[{"name": "bridge-to-echoer", "action": "allow", "to": ["echoer"], "from": ["bridge"]}])
    config = load_config(path)
    control = await start_control(config)
    sink = control.sink
    agent = asyncio.create_task(run_agent(config, "echoer"))
    bridge = MeshNode(config, "bridge")
    try:
        await bridge.start(timeout=10)
        grpc_module = importlib.import_module(f"{PKG}.service_pb2_grpc")
        messages = importlib.import_module(f"{PKG}.messages_pb2")
        stub = bridge.stub("echoer", grpc_module.EchoerStub)
        say = asyncio.ensure_future(stub.Say(messages.Ask(text="hi"), wait_for_ready=True, timeout=10))
        done, _ = await asyncio.wait({agent, say}, return_when=asyncio.FIRST_COMPLETED)
        if agent in done:
            say.cancel()
            agent.result()  # the agent refused to start: raise its error
        answer = await say
        assert (answer.text, answer.n) == ("said hi", 1)
        streamed = [(a.text, a.n) async for a in stub.Count(messages.Ask(text="x", count=3), timeout=10)]
        assert streamed == [("x", 0), ("x", 1), ("x", 2)]
        health = bridge.stub("echoer", health_pb2_grpc.HealthStub)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        empty = importlib.import_module("google.protobuf.empty_pb2").Empty
        assert await stub.Ping(empty(), timeout=10) == empty()
    finally:
        agent.cancel()
        await asyncio.gather(agent, return_exceptions=True)
        await bridge.close()
        await control.stop(0)
        sink.shutdown(2)
