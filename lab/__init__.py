"""Equipment the test suite and the benchmark both use (a swarm on this machine, peers in network namespaces,
what a receiver saw of an RTP stream), kept out of `src/` since users are never shipped it."""
