"""agentmesh benchmarks: ``python -m benchmarks.run [--quick] [--rotate] [--fixed-rate]`` (or ``make bench``).

::

    run.py        the entry point: the phases, output
    variants.py   the variant phase: servers per variant, closed-loop interleaved rounds, medians
    fixedrate.py  the fixed-rate phase: v2 against v3 in an open loop at 250 / 500 / 1000 calls/s
    openloop.py   one open-loop round in the load generator: due times from a ticker process, latency from them
    fixedreport.py  the fixed-rate figures: medians, added latency, mesh CPU, the table beside the anchors
    anchors.py    the published figures (Istio, agentgateway) and issue 12's fixed-rate targets, as data
    settings.py   the presets (full, quick, smoke) and the variants
    meshdir.py    a throwaway mesh on disk: CA, identities, token key, mesh.yaml, gateway JWT key
    serve.py      every server, one per process (``python -m benchmarks.serve KIND ...``)
    echo.py       the echo servicer and the request every variant sends
    gateway.py    variants 6 and 8: the FastAPI + PyJWT + slowapi gateways people build today (answering
                  locally; forwarding over gRPC mTLS to the bare agent)
    loadgen.py    the gRPC load generator (its own process): closed-loop rounds, and fixed-rate rounds
    httpload.py   HTTP load: wrk when installed, else an httpx closed loop in its own process
    procs.py      starting / stopping server processes, /proc CPU readings, redis-server
    micro.py      in-process micro-benchmarks of each chain stage and of the CA
    rotation.py   certificate rotation under load
    report.py     the terminal table, latest.json, latest.png, targets
    profile.py    py-spy on variant 3's server and client (``python -m benchmarks.profile``)
"""
