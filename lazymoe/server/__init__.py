"""OpenAI-compatible HTTP server over the engine (`lazymoe serve`), one concept per file:

    config.py     ServerConfig: address and every limit
    app.py        create_app(backend, config, keys): the routes and the order of the checks
    guard.py      what runs before any route: the key (before the body), the body (bounded in
                  bytes and time, chunked or not), a 500 that keeps the connection, counting
    protocol.py   uvicorn's HTTP/1.1 with a deadline for a request's headers
    auth.py       KeyStore: members' salted scrypt hashes, constant-time checks, roles, own limits
    throttle.py   AuthThrottle: wrong keys per client address, bounded memory
    limits.py     RateLimiter: requests and tokens per key per minute, tokens per day
    prompts.py    PromptChecker: valid text, cheap length bound, token id range, tokenizing
                  off the event loop
    scheduler.py  Scheduler: one worker thread, a bounded queue served round-robin per key
    batching.py   BatchLoop: continuous batching, one engine step for every request in flight
    streaming.py  token events -> text pieces -> server-sent events; cancel on disconnect
    detok.py      TextStream: ids -> text without half characters or stop strings
    schemas.py    request bodies (pydantic) and response bodies
    errors.py     APIError and OpenAI's error JSON; handlers.py: FastAPI's errors in that shape
    metrics.py    /metrics: Prometheus text or JSON
    backend.py    the protocol the server needs, and EngineBackend over lazymoe.engine.Engine
    fake.py       EchoBackend: a deterministic stand-in for tests
    embedded.py   EmbeddedServer: run it inside a notebook or a test, on a free loopback port
    loadtest.py   TTFT, tokens/s and many users at once, measured from the client side
    cli.py        `lazymoe serve` and its key management
"""
