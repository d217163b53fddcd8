"""agentmesh benchmarks: ``python -m benchmarks.run [--quick] [--rotate]`` (or ``make bench``).

::

    run.py        the entry point: phases, interleaved rounds, medians, output
    settings.py   the presets (full, quick, smoke) and the variants
    meshdir.py    a throwaway mesh on disk: CA, identities, token key, mesh.yaml, gateway JWT key
    serve.py      every server, one per process (``python -m benchmarks.serve KIND ...``)
    echo.py       the echo servicer and the request every variant sends
    gateway.py    variant 6: the FastAPI + PyJWT + slowapi gateway people build today
    loadgen.py    the gRPC closed-loop load generator (its own process)
    httpload.py   HTTP load: wrk when installed, else an httpx closed loop in its own process
    procs.py      starting / stopping server processes, /proc CPU readings, redis-server
    micro.py      in-process micro-benchmarks of each chain stage and of the CA
    rotation.py   certificate rotation under load
    report.py     the terminal table, latest.json, latest.png, targets
    profile.py    py-spy on variant 3's server and client (``python -m benchmarks.profile``)
"""
