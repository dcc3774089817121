"""The Redis side: every command the hub sends and the scripts it runs (`store`), the
`redis-server` it may start itself (`embedded`), and `hub migrate` to a Redis Cluster."""
