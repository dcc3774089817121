"""The web side, on aiohttp: the application and its server, the HTTP API, the `/ws` and
`/sse` endpoints with their wires, the browser's files and `/metrics`."""
