"""``agentmesh init DIR``: scaffold a mesh that runs as it is, for a first agent of one's own.

Into a new (or empty) directory it writes a CA, an identity for the control plane, for the bridge
(with the DNS name ``localhost``, so ``curl https://localhost:PORT`` passes the name check) and for each
agent, a commented ``mesh.yaml`` (trust domain, agents, control plane, bridge, a JSONL audit log and
a policy that lets clients call the agents through the bridge), one echo agent module per agent,
and prints the commands that run it and call it.

Ports: ``--base-port N`` (7300 by default) gives the control plane N, the agents N+1... and the bridge
the next one; when one of them is taken here and now (or N is 0), every member gets a free port instead
(and the printed commands say which).
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from agentmesh.cli.usage import examples
from agentmesh.errors import ConfigError
from agentmesh.identity import validate_agent_name, validate_trust_domain
from agentmesh.pki import CertificateAuthority, write_identity

__all__ = ["port_free", "register", "scaffold"]

DEFAULT_BASE_PORT = 7300
RESERVED = ("control", "bridge")  # the names of the control plane and the bridge in the scaffolded mesh


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "init", help="scaffold a working mesh in a new directory: CA, identities, mesh.yaml, an echo agent",
        description="Creates DIR (it must be new or empty) with a CA (.mesh/ca), identities for the control\n"
                    "plane, the bridge (DNS name localhost) and each agent (.mesh/identities), a commented\n"
                    "mesh.yaml, and an echo agent module per agent (myagents/NAME.py); then prints the\n"
                    "commands that start the mesh and call an agent through the bridge.",
        **examples("agentmesh init mymesh",
                   "agentmesh init mymesh --trust-domain example.org --agent echo --agent notes",
                   "agentmesh init mymesh --base-port 7400"))
    p.add_argument("dir", type=Path, metavar="DIR", help="directory to create (new or empty)")
    p.add_argument("--trust-domain", default="example.org", help="SPIFFE trust domain (default example.org)")
    p.add_argument("--agent", action="append", default=[], metavar="NAME",
                   help="an agent to scaffold (repeatable; default: echo)")
    p.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, metavar="N",
                   help=f"control plane on N, agents on N+1..., bridge next (default {DEFAULT_BASE_PORT}; "
                        "free ports instead when one is taken; 0: free ports)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    mesh = scaffold(args.dir, args.trust_domain, args.agent or ["echo"], args.base_port)
    d = args.dir
    print(f"created a mesh for spiffe://{args.trust_domain} in {d}")
    print(f"  {d / 'mesh.yaml'}: control plane, agents {', '.join(mesh.agents)}, bridge, policy, audit")
    print(f"  {d / '.mesh/ca'}: the CA; {d / '.mesh/identities'}: control, bridge, {', '.join(mesh.agents)}")
    print(f"  {d / 'myagents'}: " + ", ".join(f"{m}.py" for m in mesh.modules))
    if mesh.moved:
        print(f"  (ports {mesh.base}-{mesh.base + len(mesh.agents) + 1} are not all free here: using free ports)")
    first = mesh.agents[0]
    print("next (agentmesh is .venv/bin/agentmesh in the agentmesh checkout, or activate the venv):")
    print(f"  cd {d}")
    print("  agentmesh up mesh.yaml &")
    print("  TOKEN=$(agentmesh token issue --config mesh.yaml --sub alice@example.org --role client)")
    print('  curl --cacert .mesh/ca/bundle.pem -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" '
          f"{mesh.url}/v1/agents/{first}/agentmesh.v1.Agent/Invoke -d '{{\"input\":[{{\"text\":\"hello\"}}]}}'")
    return 0


class Scaffold:
    """What :func:`scaffold` made: the agents, their modules, the ports and the bridge's URL."""

    def __init__(self, agents: list[str], ports: list[int], base: int, moved: bool) -> None:
        self.agents = agents
        self.modules = [_module(a) for a in agents]
        self.ports = ports  # control, agents..., bridge
        self.base = base
        self.moved = moved
        self.url = f"https://localhost:{ports[-1]}"


def scaffold(directory: Path, trust_domain: str, agents: list[str], base_port: int = DEFAULT_BASE_PORT) -> Scaffold:
    """Writes the mesh into ``directory``; :class:`ConfigError` (nothing written) for a non-empty
    directory, a bad trust domain or agent name."""
    validate_trust_domain(trust_domain)
    for name in agents:
        validate_agent_name(name)
        if name in RESERVED:
            raise ConfigError(f"--agent {name}: reserved for the mesh's {name} (choose another name)")
    if len(set(agents)) != len(agents):
        raise ConfigError(f"--agent: named twice: {', '.join(sorted({a for a in agents if agents.count(a) > 1}))}")
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigError(f"{directory}: not empty (init writes a new mesh into a new or empty directory)")
    ports, moved = _ports(base_port, len(agents) + 2)
    mesh = Scaffold(list(agents), ports, base_port, moved)

    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.init(directory / ".mesh" / "ca", trust_domain)
    identities = directory / ".mesh" / "identities"
    for name in ("control", *agents):
        write_identity(ca.issue(name), identities / name)
    write_identity(ca.issue("bridge", dns=["localhost"]), identities / "bridge")

    (directory / "mesh.yaml").write_text(_mesh_yaml(trust_domain, mesh))
    package = directory / "myagents"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, module in zip(agents, mesh.modules, strict=True):
        (package / f"{module}.py").write_text(_agent_py(name))
    return mesh


def _ports(base: int, count: int) -> tuple[list[int], bool]:
    """``count`` ports from ``base`` on when all are free here, else ``count`` free ones (and True);
    ``base`` 0: free ones."""
    if not 0 <= base <= 65536 - count:
        raise ConfigError(f"--base-port: {base} leaves no room for the mesh's {count} ports")
    wanted = list(range(base, base + count))
    if base and all(port_free(p) for p in wanted):
        return wanted, False
    held: list[socket.socket] = []
    try:  # held open together so that no two are the same
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held], base != 0
    finally:
        for s in held:
            s.close()


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _module(agent: str) -> str:
    module = agent.replace("-", "_")
    return f"agent_{module}" if module[0].isdigit() else module


def _class(agent: str) -> str:
    name = "".join(part.capitalize() for part in agent.split("-"))
    return f"Agent{name}" if name[0].isdigit() else name


def _mesh_yaml(trust_domain: str, mesh: Scaffold) -> str:
    control, *agent_ports, bridge = mesh.ports
    width = max(len(a) for a in mesh.agents) + 1
    agents = "\n".join(
        f"  {(a + ':').ljust(width)} {{ address: 127.0.0.1:{port}, app: \"myagents.{m}:{_class(a)}\", roles: [{a}] }}"
        for a, m, port in zip(mesh.agents, mesh.modules, agent_ports, strict=True))
    to = ", ".join(mesh.agents)
    first = mesh.agents[0]
    pad = " " * max(0, 12 - len(first))
    return f"""\
# A mesh made by `agentmesh init`. Start it from this directory: agentmesh up mesh.yaml
# (relative paths are relative to this file; the agents' modules are imported from the working directory).
{"trust_domain: " + trust_domain:<36} # SPIFFE IDs: spiffe://{trust_domain}/agent/<name>
ca: .mesh/ca                         # the mini CA (agentmesh ca init); only the control plane reads it
identities: .mesh/identities         # <name>/{{cert,key,bundle}}.pem for the control plane, the bridge, each agent

control:                             # bound agent tokens, certificate renewal, the trust stream (mTLS)
  {"address: 127.0.0.1:" + str(control):<34} # (add join_address: to let members join with a one-time token)

agents:                              # name: where it listens, its servicer (module:Class), the roles its token carries
{agents}

policy:                              # deny rules first, then allow rules; no rule matches: denied
  - name: clients-via-bridge         # external clients (a token with role client) may call the agents...
    action: allow
    to: [{to}]
    methods: ["/agentmesh.v1.Agent/*"]
    roles: [client]
    via: [bridge]                    # ...through the bridge. An allow rule without `via` (or `chain`)
                                     # matches direct calls between members only, never a delegated one.
  # - name: {first}-calls-other{pad} # a direct call from one agent to another (its own token's roles):
  #   action: allow
  #   to: [other]
  #   from: [{first}]
  #   roles: [{first}]

audit:                               # one span per call, refusals included: agentmesh audit tail .mesh/audit.jsonl
  exporters: [jsonl]
  jsonl_path: .mesh/audit.jsonl

bridge:                              # HTTPS + bearer token in, gRPC over mTLS to the agents
  {"listen: 127.0.0.1:" + str(bridge):<34} # its certificate names localhost: {mesh.url}
  tls: true
"""


def _agent_py(agent: str) -> str:
    return f'''\
"""The {agent} agent: answers with who called it and what they said. Edit Invoke to make it yours."""

import grpc

from agentmesh import MeshNode, current_call
from agentmesh.v1 import agent_pb2, agent_pb2_grpc


class {_class(agent)}(agent_pb2_grpc.AgentServicer):
    def __init__(self, node: MeshNode):  # optional: self.node.stub("other", agent_pb2_grpc.AgentStub) calls others
        self.node = node

    async def Invoke(self, task: agent_pb2.Task, context: grpc.aio.ServicerContext) -> agent_pb2.TaskResult:
        caller = current_call()  # verified: peer, principal, roles; delegated: txn_id, scope, chain
        said = task.input[0].text if task.input else ""
        text = f"{{caller.principal}} (via {{', '.join(caller.chain) or 'direct'}}) said {{said}}"
        return agent_pb2.TaskResult(task_id=task.id, status=agent_pb2.TASK_STATUS_COMPLETED,
                                    output=[agent_pb2.Part(text=text)])
'''
