"""The pure core: IDs, cursors, the wake registry, the wire protocol, events, tokens, key names,
admission limits and counts. No I/O, no asyncio: each module is tested on its own."""
